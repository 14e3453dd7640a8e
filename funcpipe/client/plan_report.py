"""Text report of a planning run: the chosen plan, the runners-up and the baselines, and why they
lost, as `funcpipe plan` prints it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from funcpipe.planning.optimize import Candidate, Solution


def _layers(names: Sequence[str], start: int, end: int) -> str:
    first, last = names[start], names[end - 1]
    return f"[{start}, {end}) {first}" + (f" .. {last}" if end - start > 1 else "")


def plan_table(best: Candidate, layer_names: Sequence[str], iterations_per_epoch: int) -> list[str]:
    """The chosen plan: one row per stage, then predicted time and cost."""
    plan, pred = best.plan, best.prediction
    mems = list(getattr(pred, "memory_mb", []) or [math.nan] * plan.num_stages)
    cpus = list(getattr(pred, "cpus", []) or [math.nan] * plan.num_stages)
    lines = [
        f"{'stage':>5}  {'layers':<40} {'memory':>8} {'needs':>8} {'cpus':>5} {'replicas':>8}",
    ]
    for s, st in enumerate(plan.stages):
        lines.append(
            f"{s:>5}  {_layers(layer_names, st.start, st.end)[:40]:<40} {st.memory_mb:>6}MB "
            f"{mems[s]:>6.0f}MB {cpus[s]:>5.2f} {st.replicas:>8}"
        )
    per_epoch = pred.cost_usd * iterations_per_epoch
    lines.append(
        f"micro-batches {plan.micro_batches}, {plan.num_functions} functions; predicted "
        f"{pred.time_s:.3f} s and ${pred.cost_usd:.6f} per iteration, "
        f"${per_epoch:.4f} and {pred.time_s * iterations_per_epoch / 60:.1f} min per epoch "
        f"({iterations_per_epoch} iterations)"
    )
    return lines


def _shape(c: Candidate) -> str:
    p = c.plan
    reps = ",".join(str(s.replicas) for s in p.stages)
    mems = ",".join(str(s.memory_mb) for s in p.stages)
    return f"{p.num_stages} st x [{reps}] @ [{mems}] MB, M={p.micro_batches}"


def why_lost(c: Candidate, best: Candidate) -> str:
    """One phrase: the limit it breaks, or how much slower/costlier it is."""
    if c.violation:
        return c.violation
    dt = c.prediction.time_s - best.prediction.time_s
    dc = c.prediction.cost_usd - best.prediction.cost_usd
    parts = []
    if dt > 0:
        parts.append(f"{dt / best.prediction.time_s:+.0%} time")
    if dc > 0:
        parts.append(f"{dc / best.prediction.cost_usd:+.0%} cost")
    if not parts:
        return "same objective" if c.objective <= best.objective else "higher objective"
    return ", ".join(parts)


def comparison(best: Candidate, rows: Sequence[tuple[str, Candidate | None, str]]) -> list[str]:
    """``rows``: (label, candidate or None, note when None)."""
    out = [f"{'':<16} {'time s':>8} {'cost $/iter':>12} {'objective':>11}  plan / why it lost"]
    out.append(
        f"{'chosen':<16} {best.prediction.time_s:>8.3f} {best.prediction.cost_usd:>12.6f} "
        f"{best.objective:>11.6f}  {_shape(best)}"
    )
    for label, c, note in rows:
        if c is None:
            out.append(f"{label:<16} {'-':>8} {'-':>12} {'-':>11}  {note}")
            continue
        out.append(
            f"{label:<16} {c.prediction.time_s:>8.3f} {c.prediction.cost_usd:>12.6f} "
            f"{c.objective:>11.6f}  {_shape(c)}: {why_lost(c, best)}"
        )
    return out


def runners_up(sol: Solution, count: int = 3) -> list[Candidate]:
    """The best simulated alternatives of a different shape from the chosen plan."""
    assert sol.best is not None
    seen = {_shape(sol.best)}
    out = []
    for c in sol.candidates:
        if c is sol.best or _shape(c) in seen:
            continue
        seen.add(_shape(c))
        out.append(c)
        if len(out) == count:
            break
    return out
