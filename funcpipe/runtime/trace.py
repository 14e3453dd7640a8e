"""Turn the functions' step reports into a Chrome trace (chrome://tracing, Perfetto).

One row per function and lane (compute, upload, download, the all-reduce's sync lanes), so the
overlap of communication with compute, the pipeline bubbles and the gradient synchronisation can
be seen at a glance. Measured runs and simulations write the same format: it lives here, below
both the client and the planner.
"""

from __future__ import annotations

from typing import Any

from funcpipe.schedule.actions import Lane

_LANE_ORDER = {lane.value: i for i, lane in enumerate(Lane)}


def chrome_trace(reports: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Chrome trace-event JSON for ``TrainResult.reports`` (times relative to the first step)."""
    spans = [(r, span) for step in reports for r in step for span in r["spans"]]
    if not spans:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    origin = min(r["start"] for step in reports for r in step)
    events: list[dict[str, Any]] = []
    functions = sorted({(r["stage"], r["replica"]) for r, _ in spans})
    for pid, (stage, replica) in enumerate(functions):
        name = f"stage{stage}-replica{replica}"
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}})
        for lane, tid in _LANE_ORDER.items():
            events.append(
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": lane}}
            )
    pids = {f: i for i, f in enumerate(functions)}
    for r, (label, lane, t0, t1) in spans:
        events.append(
            {
                "ph": "X",
                "name": label,
                "cat": lane,
                "pid": pids[(r["stage"], r["replica"])],
                "tid": _LANE_ORDER[lane],
                "ts": round((t0 - origin) * 1e6, 1),
                "dur": round(max(t1 - t0, 0.0) * 1e6, 1),
                "args": {"step": r["step"]},
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ms"}
