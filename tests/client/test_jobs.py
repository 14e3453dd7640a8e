"""Job ids are safe key parts, jobs never see each other's keys, and dead jobs can be cleaned."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from funcpipe import LinkConfig, Plan, Stage, train
from funcpipe.client.cli import cli
from funcpipe.client.jobs import (
    LIVE_WINDOW_S,
    Heartbeat,
    clean,
    list_jobs,
    parse_duration,
    validate_job_id,
)
from funcpipe.errors import ConfigError
from funcpipe.storage.local_dir import LocalDirStorage

FAST_LINK = LinkConfig(up_mb_s=500.0, down_mb_s=500.0, latency_s=0.0)


@pytest.mark.parametrize("good", ["a", "ab", "run-3.x_y", "A" * 64, "0abc"])
def test_valid_job_ids(good: str) -> None:
    assert validate_job_id(good) == good


@pytest.mark.parametrize(
    "bad,why",
    [
        ("a/x", "contains '/'"),
        ("", "1 to 64 characters"),
        ("..", "1 to 64 characters"),
        (".hidden", "1 to 64 characters"),
        ("a b", "1 to 64 characters"),
        ("a*", "1 to 64 characters"),
        ("A" * 65, "1 to 64 characters"),
        (7, "is a int"),
    ],
)
def test_invalid_job_ids(bad: object, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        validate_job_id(bad)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _run(root, job_id: str | None, steps: int = 3, **kw):
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(steps)
    ]
    plan = Plan(stages=[Stage(start=0, end=2), Stage(start=2, end=3, replicas=2)], micro_batches=2)
    return train(_model(), nn.MSELoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                 batches=batches, plan=plan, storage=f"local://{root}", link=FAST_LINK,
                 progress=False, timeout_s=60, job_id=job_id, **kw)  # fmt: skip


def test_train_refuses_a_nested_job_id_before_starting(tmp_path) -> None:
    with pytest.raises(ConfigError, match="invalid job_id 'a/x'.*contains '/'"):
        _run(tmp_path, "a/x")
    assert LocalDirStorage(tmp_path).list("") == []


@pytest.mark.timeout(600)  # functions start in fresh interpreters: slow on a loaded machine
def test_jobs_whose_ids_share_a_prefix_stay_isolated(tmp_path) -> None:
    """'a' ends (and deletes its keys) while 'ab' runs; 'ab' trains exactly as PyTorch does."""
    results: dict[str, object] = {}

    def other() -> None:
        try:
            results["ab"] = _run(tmp_path, "ab", steps=6)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results["ab"] = exc

    thread = threading.Thread(target=other)
    thread.start()
    store = LocalDirStorage(tmp_path)
    deadline = time.monotonic() + 300
    while not store.exists("jobs/ab/manifest") and time.monotonic() < deadline:
        time.sleep(0.01)
    short = _run(tmp_path, "a", steps=2)
    thread.join(500)
    assert not isinstance(results["ab"], BaseException), results["ab"]
    assert short.job_id == "a"
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
        opt.zero_grad()
        nn.MSELoss()(model(x), y).backward()
        opt.step()
    got = results["ab"].model.state_dict()  # type: ignore[union-attr]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6, msg=name)
    assert store.list("") == []


def test_a_running_job_keeps_a_fresh_manifest(tmp_path) -> None:
    store = LocalDirStorage(tmp_path)
    with Heartbeat(store, "hb", period_s=0.05) as hb:
        first = json.loads(store.get("jobs/hb/manifest"))
        time.sleep(0.3)
        later = json.loads(store.get("jobs/hb/manifest"))
        assert first["started"] == later["started"] == hb.started
        assert later["heartbeat"] > first["heartbeat"]
        (job,) = list_jobs(store)
        assert job.job_id == "hb" and job.live() and job.objects == 1
    assert not hb.errors


def _leave(store: LocalDirStorage, job_id: str, heartbeat: float | None, objects: int = 2) -> None:
    for i in range(objects):
        store.put(f"jobs/{job_id}/step0/act/s0/mb{i}", b"x")
    if heartbeat is not None:
        manifest = {"job_id": job_id, "started": heartbeat - 5, "heartbeat": heartbeat}
        store.put(f"jobs/{job_id}/manifest", json.dumps(manifest).encode())


def test_clean_removes_dead_jobs_and_keeps_live_ones(tmp_path) -> None:
    store = LocalDirStorage(tmp_path)
    now = time.time()
    _leave(store, "live", now - 1)
    _leave(store, "dead-recent", now - LIVE_WINDOW_S - 10)
    _leave(store, "dead-old", now - 3 * 3600)
    _leave(store, "no-manifest", None)
    store.put("other/thing", b"not a job")

    would = clean(store, older_than_s=3600, dry_run=True, now=now)
    assert sorted(j.job_id for j in would) == ["dead-old", "no-manifest"]
    assert len(store.list("jobs/")) == 3 + 3 + 3 + 2  # dry run removed nothing

    removed = clean(store, older_than_s=3600, now=now)
    assert sorted(j.job_id for j in removed) == ["dead-old", "no-manifest"]
    assert [j.job_id for j in list_jobs(store)] == ["dead-recent", "live"]

    removed = clean(store, now=now)  # default: every dead job
    assert [j.job_id for j in removed] == ["dead-recent"]
    assert clean(store, now=now) == []  # the live job stays
    assert [j.job_id for j in clean(store, job_ids=["live"], force=True, now=now)] == ["live"]
    assert store.list("") == ["other/thing"]  # nothing outside jobs/ is touched


def test_clean_command_lists_and_removes(tmp_path) -> None:
    store = LocalDirStorage(tmp_path)
    now = time.time()
    _leave(store, "live", now)
    _leave(store, "dead", now - 7200)
    url = f"local://{tmp_path}"
    dry = CliRunner().invoke(cli, ["clean", "--storage", url, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove 1 job(s), 3 object(s); kept 1" in dry.output
    assert len(store.list("jobs/")) == 6
    out = CliRunner().invoke(cli, ["clean", "--storage", url, "--older-than", "1h"])
    assert out.exit_code == 0, out.output
    lines = {line.split()[0]: line for line in out.output.splitlines()[1:-1]}
    assert "dead" in lines["dead"] and lines["dead"].endswith("removed")
    assert "live" in lines["live"] and lines["live"].endswith("kept")
    assert [j.job_id for j in list_jobs(store)] == ["live"]


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ["90", "90s", "10m", "2h", "1.5d"]] == [
        90, 90, 600, 7200, 1.5 * 86400,
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="optional unit"):
        parse_duration("soon")


KILLED_CLIENT = """
import sys, torch
from torch import nn
from funcpipe import LinkConfig, Plan, Stage, train
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
batches = ((torch.randn(8, 6), torch.randn(8, 3)) for _ in range(100000))
plan = Plan(stages=[Stage(start=0, end=2), Stage(start=2, end=3)], micro_batches=2)
train(model, nn.MSELoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), batches=batches,
      plan=plan, steps=100000, storage=sys.argv[1], progress=False, job_id="killed",
      link=LinkConfig(up_mb_s=500.0, down_mb_s=500.0, latency_s=0.05))
"""


def _past_step0(store: LocalDirStorage) -> bool:
    """Step 2's data is fed once step 0 has reported; it stays until step 2 runs."""
    parts = {p for k in store.list("jobs/killed/") for p in k.split("/")}  # .../g<n>/step<t>/...
    return any(p.startswith("step") and p not in ("step0", "step1") for p in parts)


@pytest.mark.timeout(600)  # functions start in fresh interpreters: slow on a loaded machine
def test_keys_of_a_killed_client_are_cleaned_once_its_heartbeat_is_stale(tmp_path) -> None:
    import subprocess
    import sys

    store = LocalDirStorage(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, f"local://{tmp_path}"])
    try:
        deadline = time.monotonic() + 500
        while not _past_step0(store):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no cleanup runs in the client
        proc.wait()
    time.sleep(0.5)  # its functions die with it (PR_SET_PDEATHSIG)
    (job,) = list_jobs(store)
    assert job.job_id == "killed" and job.objects > 1 and job.live()
    assert clean(store) == []  # too recent to call dead
    later = time.time() + LIVE_WINDOW_S + 1
    assert [j.job_id for j in clean(store, now=later)] == ["killed"]
    assert store.list("") == []


def test_cli_job_id_is_checked_before_anything_runs(tmp_path) -> None:
    result = CliRunner().invoke(
        cli, ["train", "--job-id", "a/x", "--storage", f"local://{tmp_path}"]
    )
    assert isinstance(result.exception, ConfigError)
    assert "invalid job_id 'a/x'" in str(result.exception)
    assert not list(tmp_path.iterdir())
