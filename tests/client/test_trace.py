"""The Chrome trace shows each function's lanes with the actions the reports recorded."""

from __future__ import annotations

import json

from funcpipe.client.trace import chrome_trace


def report(stage: int, replica: int, step: int, start: float, spans: list) -> dict:
    return {"stage": stage, "replica": replica, "step": step, "start": start, "spans": spans}


def test_spans_become_complete_events_on_their_lane() -> None:
    reports = [[
        report(0, 0, 0, 100.0, [["forward mb0@s0", "compute", 100.0, 100.5],
                                ["send_act mb0@s0", "upload", 100.5, 101.0]]),
        report(1, 0, 0, 100.2, [["recv_act mb0@s1", "download", 100.2, 101.2]]),
    ]]  # fmt: skip
    trace = chrome_trace(reports)
    json.dumps(trace)  # serialisable as is
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    by_name = {e["name"]: e for e in spans}
    assert by_name["forward mb0@s0"]["ts"] == 0 and by_name["forward mb0@s0"]["dur"] == 500000
    assert by_name["send_act mb0@s0"]["tid"] != by_name["forward mb0@s0"]["tid"]
    assert by_name["recv_act mb0@s1"]["pid"] != by_name["forward mb0@s0"]["pid"]
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"}
    assert names == {"stage0-replica0", "stage1-replica0"}


def test_empty_reports_give_an_empty_trace() -> None:
    assert chrome_trace([])["traceEvents"] == []
