"""Stream ``result.history`` to disk while training: a CSV file and TensorBoard event files.

Each step is written (and flushed) as soon as the client has its reports, so a long job can be
watched with ``tensorboard --logdir DIR`` or ``tail -f DIR/history.csv``, and a job that fails
keeps the rows of the steps it finished. TensorBoard needs the optional ``tensorboard`` package
(``pip install 'funcpipe[tensorboard]'``); it is imported only when a log is opened.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from funcpipe.errors import ConfigError

__all__ = ["CSV_NAME", "HistoryLog"]

CSV_NAME = "history.csv"


def _summary_writer(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            f"log_dir needs the tensorboard package for its TensorBoard files ({exc}); install "
            "it with: pip install 'funcpipe[tensorboard]'"
        ) from None
    return SummaryWriter(log_dir=str(log_dir))


class HistoryLog:
    """Appends one row per step to ``<log_dir>/history.csv`` and scalars to TensorBoard."""

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(log_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create log_dir {str(self.dir)!r}: {exc}") from exc
        self._writer = _summary_writer(self.dir)  # before the CSV: fail without leaving files
        self._file = (self.dir / CSV_NAME).open("w", newline="")
        self._csv: csv.DictWriter[str] | None = None
        self._cost = 0.0

    def write(self, stats: Any) -> None:
        """Log one step (a StepStats, or any dataclass with ``step``)."""
        row = dataclasses.asdict(stats)
        if self._csv is None:
            self._csv = csv.DictWriter(self._file, fieldnames=list(row))
            self._csv.writeheader()
        self._csv.writerow({k: "" if v is None else v for k, v in row.items()})
        self._file.flush()
        step = int(row["step"])
        self._cost += float(row.get("cost_usd") or 0.0)
        for name, value in row.items():
            if name == "step" or isinstance(value, str) or value is None:
                continue
            if isinstance(value, bool | int | float) and math.isfinite(float(value)):
                self._writer.add_scalar(f"train/{name}", float(value), step)
        self._writer.add_scalar("train/total_cost_usd", self._cost, step)
        self._writer.flush()

    def finish(self, history: list[Any]) -> None:
        """Replace the streamed rows by the final ones once the bill is complete.

        While training, a step's cost is known only up to the functions' ends; the last step
        also pays for the final upload and each function's rounding, known at the very end.
        """
        self._file.close()
        self._file = (self.dir / CSV_NAME).open("w", newline="")
        writer: csv.DictWriter[str] | None = None
        for stats in history:
            row = dataclasses.asdict(stats)
            if writer is None:
                writer = csv.DictWriter(self._file, fieldnames=list(row))
                writer.writeheader()
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        self._file.flush()
        if history:  # TensorBoard shows the newest value of a step: the final total
            total = sum(float(getattr(h, "cost_usd", 0.0) or 0.0) for h in history)
            self._writer.add_scalar("train/total_cost_usd", total, int(history[-1].step))
            self._writer.flush()

    def close(self) -> None:
        self._file.close()
        self._writer.close()

    def __enter__(self) -> HistoryLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
