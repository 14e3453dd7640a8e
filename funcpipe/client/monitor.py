"""Each step's reports as they arrive: the progress bar, the streamed history, the client's traffic.

A rollback makes the functions redo steps; their reports replace the ones of the first try, and
a redone step is written to the history log once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from funcpipe.client.billing import bill_steps
from funcpipe.client.history_log import HistoryLog
from funcpipe.client.hygiene import nonfinite_step
from funcpipe.client.pricing import Pricing
from funcpipe.client.results import REQUEST_KINDS, step_stats
from funcpipe.plan import Plan
from funcpipe.storage.throttle import ThrottledStorage

__all__ = ["Monitor", "add_traffic", "traffic_delta"]


def traffic_delta(now: Any, before: Any) -> dict[str, float]:
    """The requests counted between two snapshots of a link's stats."""
    a, b = now.as_dict(), before.as_dict()
    return {k: a.get(k, 0) - b.get(k, 0) for k in REQUEST_KINDS}


def add_traffic(x: dict[str, float], y: dict[str, float]) -> dict[str, float]:
    return {k: x.get(k, 0) + y.get(k, 0) for k in REQUEST_KINDS}


class Monitor:
    """Keeps every step's reports, the generation that ran it and the client's requests for it.

    ``on_reports`` and ``on_eval`` are the manager's callbacks; ``generation()`` names the
    generation running now. The client's own requests (data, reports, weights) are priced too,
    so ``shared`` (the client's view of the job's storage) counts them.
    """

    def __init__(
        self,
        *,
        plan: Plan,
        first_step: int,
        shared: ThrottledStorage,
        memory: dict[tuple[int, int], int],
        pricing: Pricing,
        on_nonfinite: str,
        log: HistoryLog | None,
        bar: Any,
        generation: Callable[[], int],
    ) -> None:
        self.plan, self.first_step, self.shared = plan, first_step, shared
        self.memory, self.pricing, self.on_nonfinite = memory, pricing, on_nonfinite
        self.log, self.bar, self.generation = log, bar, generation
        self.counted = shared.stats.snapshot()
        self.reports: list[list[dict[str, Any]]] = []
        self.made_by: list[int] = []  # the generation that ran each step
        self.client_traffic: list[dict[str, float]] = []
        self.evals: dict[int, tuple[float, float | None]] = {}
        self.skipped: list[bool] = []
        self.logged = first_step - 1

    def on_reports(self, t: int, step_reports: list[dict[str, Any]]) -> None:
        i = t - self.first_step
        if i < len(self.reports):  # rolled back: these steps are redone
            del self.reports[i:], self.made_by[i:], self.client_traffic[i:], self.skipped[i:]
            self.bar.n = t
        self.skipped.append(nonfinite_step(t, step_reports, self.on_nonfinite))
        now = self.shared.stats.snapshot()
        self.client_traffic.append(traffic_delta(now, self.counted))
        self.counted = now
        self.reports.append(step_reports)
        self.made_by.append(self.generation())
        if self.log is not None and t > self.logged:  # a redone step is logged once
            bill = bill_steps(
                self.reports[-1:], [], self.memory, self.client_traffic[-1:], self.pricing
            )[0]
            stats = step_stats(t, step_reports, self.plan, bill, self.client_traffic[-1])
            self.log.write(dataclasses.replace(stats, skipped=self.skipped[-1]))
            self.logged = t
        self.bar.set_postfix(self._postfix(), refresh=False)
        self.bar.update(1)

    def on_eval(self, t: int, scores: list[dict[str, Any]]) -> None:
        loss = sum(x["loss"] for x in scores)
        counted = sum(x["counted"] for x in scores)
        acc = sum(x["correct"] for x in scores) / counted if counted else None
        self.evals[t] = (loss, acc)
        self.bar.set_postfix(self._postfix())

    def count_last_requests(self) -> None:
        """The last step also pays for the final upload and each function's rounding."""
        self.client_traffic[-1] = add_traffic(
            self.client_traffic[-1], traffic_delta(self.shared.stats.snapshot(), self.counted)
        )

    def _postfix(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.reports:
            last = self.plan.num_stages - 1
            step = self.reports[-1]
            out["loss"] = f"{sum(r['loss'] for r in step if r['stage'] == last):.4f}"
            out["iter"] = f"{max(r['end'] for r in step) - min(r['start'] for r in step):.2f}s"
        if self.evals:
            loss, acc = self.evals[max(self.evals)]
            out["val_loss"] = f"{loss:.4f}"
            if acc is not None:
                out["val_acc"] = f"{acc:.3f}"
        return out
