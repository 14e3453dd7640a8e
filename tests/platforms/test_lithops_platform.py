"""The lithops platform's checks, before any call starts (whole jobs: tests/runtime)."""

from __future__ import annotations

import json

import pytest

from funcpipe.errors import ConfigError
from funcpipe.platforms.base import FunctionSpec
from funcpipe.platforms.lithops import LithopsPlatform, plan_functions


def _payload(tmp_path, replicas=(2, 2), storage=None) -> bytes:
    stages = [{"start": i, "end": i + 1, "replicas": r} for i, r in enumerate(replicas)]
    return json.dumps({
        "job_id": "j", "storage_url": storage or f"local://{tmp_path}", "stage": 0, "replica": 0,
        "plan": {"stages": stages, "micro_batches": 4},
    }).encode()  # fmt: skip


def test_plan_functions_counts_replicas() -> None:
    assert plan_functions({"stages": [{"replicas": 3}, {}, {"replicas": 2}]}) == 6


def test_default_is_localhost_on_this_interpreter() -> None:
    import sys

    plat = LithopsPlatform()
    assert plat.backend == "localhost"
    assert plat.config["localhost"]["runtime"] == sys.executable


def test_too_few_worker_processes_is_refused_before_anything_runs(tmp_path) -> None:
    plat = LithopsPlatform({"localhost": {"worker_processes": 3}})
    with pytest.raises(ConfigError) as err:
        plat.start(FunctionSpec("stage0-replica0", 1024, 60), _payload(tmp_path))
    text = str(err.value)
    assert "runs 4 functions at once" in text and "allows only 3" in text
    assert "localhost.worker_processes to at least 4" in text
    assert plat.invocations() == []
    plat.close()


def test_remote_backend_needs_max_workers_for_the_plan(tmp_path) -> None:
    plat = LithopsPlatform({"lithops": {"backend": "aws_lambda"}, "aws_lambda": {"max_workers": 2}})
    with pytest.raises(ConfigError, match="allows only 2 concurrent calls \\(max_workers\\)"):
        plat.start(FunctionSpec("stage0-replica0", 1024, 60), _payload(tmp_path, storage="s3://b"))


def test_remote_backend_cannot_reach_local_storage(tmp_path) -> None:
    plat = LithopsPlatform({"lithops": {"backend": "code_engine"}})
    with pytest.raises(ConfigError, match="on this machine, which functions on Lithops' code_en"):
        plat.start(FunctionSpec("stage0-replica0", 1024, 60), _payload(tmp_path))


def test_forwarded_variables_must_exist(monkeypatch) -> None:
    monkeypatch.delenv("FUNCPIPE_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match="FUNCPIPE_TEST_UNSET"):
        LithopsPlatform(forward_env=("FUNCPIPE_TEST_UNSET",))
    monkeypatch.setenv("FUNCPIPE_LITHOPS_FORWARD_ENV", "HOME, PATH")
    assert LithopsPlatform.from_env().forward_env == ("HOME", "PATH")


def test_config_file_is_read(tmp_path) -> None:
    config = tmp_path / "lithops.yaml"
    config.write_text("lithops:\n  backend: localhost\n  storage: localhost\nlocalhost:\n"
                      "  worker_processes: 2\n")  # fmt: skip
    assert LithopsPlatform(config).config["localhost"]["worker_processes"] == 2
    with pytest.raises(ConfigError, match="cannot read the Lithops config file"):
        LithopsPlatform(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="not a Lithops config"):
        LithopsPlatform(tmp_path / "bad.yaml")


def test_a_payload_that_is_not_a_package_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a FuncPipe function package"):
        LithopsPlatform().start(FunctionSpec("f", 1024, 60), b"{}")
