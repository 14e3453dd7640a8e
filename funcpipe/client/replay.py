"""The job's batches by step, so a rollback can feed the steps it redoes again."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from funcpipe.errors import ConfigError

__all__ = ["Replay"]


class Replay:
    """The job's batches by step: a sequence is indexed, a stream is held from a checkpoint on.

    A stream cannot be rewound, so the batches since the oldest step the job may roll back to
    are kept in memory (``release_before`` drops older ones once a newer checkpoint completes).
    """

    def __init__(self, batches: Iterable[Any], start: int = 0) -> None:
        self.seq: Sequence[Any] | None = None
        if isinstance(batches, Sequence) and not isinstance(batches, str | bytes):
            self.seq = batches
            self._it: Iterator[Any] | None = None
        else:
            self._it = iter(batches)
        self.held: dict[int, Any] = {}
        self.next_step = 0  # the step the stream's next item belongs to
        self.skip_to(start)

    def skip_to(self, step: int) -> None:
        """Consume a stream's batches of steps before ``step`` (a resumed job's data position)."""
        if self._it is None:
            return
        while self.next_step < step:
            self._pull()
            self.held.pop(self.next_step - 1, None)

    def _pull(self) -> None:
        assert self._it is not None
        try:
            item = next(self._it)
        except StopIteration:
            raise ConfigError(
                f"batches ran out after {self.next_step} steps but more steps were asked for: "
                "pass more batches or fewer steps"
            ) from None
        self.held[self.next_step] = item
        self.next_step += 1

    def get(self, step: int) -> Any:
        if self.seq is not None:
            if step >= len(self.seq):
                raise ConfigError(
                    f"batches ran out after {len(self.seq)} steps: pass more batches or fewer steps"
                )
            return self.seq[step]
        while self.next_step <= step:
            self._pull()
        if step not in self.held:
            raise ConfigError(
                f"the batch of step {step} is no longer held (a stream cannot be rewound): "
                "checkpoint more often (checkpoint_every) or pass a list of batches"
            )
        return self.held[step]

    def release_before(self, step: int) -> None:
        for s in [s for s in self.held if s < step]:
            del self.held[s]
