"""The main job as a user runs it: `funcpipe train` and friends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from funcpipe.client.cli import auto_plan, cli, main
from funcpipe.client.cli import train as cli_module  # the train command's module
from funcpipe.errors import FuncPipeError


def test_train_demo_learns_and_reports(tmp_path, monkeypatch) -> None:
    """`funcpipe train` with no plan: the planner profiles the model (cached), chooses the plan,
    and the run ends with the prediction beside the measurement."""
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "history.json"
    result = CliRunner().invoke(
        cli,
        ["train", "--steps", "8", "--batch-size", "32", "--latency-ms", "0",
         "--storage", f"local://{tmp_path / 'store'}", "--json-out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "profiling cnn on this machine" in result.output
    assert "planner   " in result.output and "plans simulated" in result.output
    assert "synthetic CIFAR-10 in the real file format" in result.output
    saved = json.loads(out.read_text())
    history = saved["history"]
    assert len(history) == 8
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(h["cost_usd"] > 0 and h["iteration_s"] > 0 for h in history)
    plan = saved["plan"]
    for s, stage in enumerate(plan["stages"]):
        line = (f"stage {s}   layers [{stage['start']}, {stage['end']}) on {stage['replicas']} "
                f"function(s) of {stage['memory_mb']} MB")  # fmt: skip
        assert line in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("predicted ") and "measured" in last and "off" in last, result.output
    written = tmp_path / "cache" / "cifar10-synthetic" / "data_batch_1.bin"
    assert written.stat().st_size % 3073 == 0


@pytest.fixture(scope="module")
def profile_cache(tmp_path_factory):
    """One profile cache for the planner tests below (the CNN is profiled once)."""
    return tmp_path_factory.mktemp("cache")


def test_train_without_a_plan_runs_the_planner(profile_cache, monkeypatch, capsys) -> None:
    import funcpipe
    from funcpipe.client.demo import model_profile
    from funcpipe.planning.platforms import local_platform
    from funcpipe.storage.throttle import LinkConfig

    monkeypatch.setenv("FUNCPIPE_CACHE", str(profile_cache))
    seen: dict = {}
    monkeypatch.setattr(cli_module, "train", _fake_train(seen))
    code, out = _main(["train", "--batch-size", "16"], monkeypatch, capsys)
    assert code == 1 and "stopped before training" in out
    plan = seen["plan"]
    assert "planner   " in out and "minimising 1*cost + 0.001*time" in out
    assert "predicted" in out and "per epoch" in out  # the plan table
    # the plan is the optimiser's for the local emulator with this run's link
    prof = model_profile("cnn")
    link = LinkConfig(up_mb_s=70.0, down_mb_s=70.0, latency_s=0.01)
    pred = funcpipe.predict(plan, prof, local_platform(link), batch_size=16)
    assert all(n <= s.memory_mb for n, s in zip(pred.memory_mb, plan.stages, strict=True))
    assert f"micro-batches {plan.micro_batches}, {plan.num_functions} functions" in out

    code, out = _main(["train", "--batch-size", "16", "--micro-batches", "8"], monkeypatch,
                      capsys)  # fmt: skip
    assert code == 1 and seen["plan"].micro_batches == 8 and "planner   " in out
    code, out = _main(["train", "--batch-size", "16", "--micro-batches", "3"], monkeypatch,
                      capsys)  # fmt: skip
    assert code == 1 and "must be divisors of the batch size 16" in out


@pytest.mark.parametrize(
    ("args", "stages", "replicas", "memory"),
    [(["--stages", "3"], 3, 2, 2048), (["--replicas", "1"], 2, 1, 2048),
     (["--memory-mb", "1024"], 2, 2, 1024)],
)  # fmt: skip
def test_explicit_stages_replicas_or_memory_make_a_hand_made_plan(
    args, stages, replicas, memory, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    seen: dict = {}
    monkeypatch.setattr(cli_module, "train", _fake_train(seen))
    code, out = _main(["train", *args], monkeypatch, capsys)
    assert code == 1 and "planner" not in out and "profiling" not in out
    plan = seen["plan"]
    assert plan.num_stages == stages and plan.micro_batches == 4
    assert all(s.replicas == replicas and s.memory_mb == memory for s in plan.stages)


def test_predicted_vs_measured_uses_the_steps_after_the_first() -> None:
    from types import SimpleNamespace

    history = [SimpleNamespace(iteration_s=t, cost_usd=c)
               for t, c in [(5.0, 1.0), (1.0, 0.1), (1.2, 0.2), (0.8, 0.3)]]  # fmt: skip
    line = auto_plan.predicted_vs_measured(SimpleNamespace(time_s=1.1, cost_usd=0.2), history)
    assert line == (
        "predicted 1.100 s and $0.200000 per iteration; measured 1.000 s and $0.200000 "
        "(median of 3 step(s) after the first): prediction +10% off"
    )


def test_bad_input_exits_with_a_clear_message(tmp_path) -> None:
    env = {**os.environ, "FUNCPIPE_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "funcpipe.client.cli", "train", "--data-dir", str(tmp_path / "no")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "data_batch_1.bin is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def _main(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run the installed entry point in-process: exit code and everything it printed."""
    monkeypatch.setattr(sys, "argv", ["funcpipe", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
        sys.exit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out + out.err


def _plan_file(tmp_path, end: int, micro_batches: int) -> str:
    path = tmp_path / "plan.json"
    stages = [{"start": 0, "end": 6, "replicas": 1}, {"start": 6, "end": end, "replicas": 1}]
    path.write_text(json.dumps({"stages": stages, "micro_batches": micro_batches}))
    return str(path)


class _StopBeforeTraining(FuncPipeError):
    pass


def _fake_train(seen: dict):
    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise _StopBeforeTraining("stopped before training")

    return fake


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "a"], "'a' is not a number"),
        (["--replicas", "1,x"], "'1,x' is not a number"),
        (["--replicas", "1,0"], "at least 1 replica"),
        (["--stages", "3", "--replicas", "1,2"], "gives 2 counts but --stages is 3"),
        (["--replicas", "4", "--micro-batches", "2"], "error: invalid Plan"),
    ],
)
def test_schedule_bad_replicas_are_reported_not_raised(args, message, monkeypatch, capsys) -> None:
    code, out = _main(["schedule", *args], monkeypatch, capsys)
    assert code in (1, 2) and message in out
    assert "Traceback" not in out and "stage0-replica0" not in out


def test_json_out_in_a_missing_folder_fails_before_training(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli_module, "make_job", _unreachable)
    target = tmp_path / "nonexistent" / "x.json"
    code, out = _main(["train", "--json-out", str(target)], monkeypatch, capsys)
    assert code == 2 and "--json-out" in out and "does not exist" in out
    assert "Traceback" not in out


def test_json_out_in_a_read_only_folder_fails_before_training(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(cli_module, "make_job", _unreachable)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root could write anywhere
    code, out = _main(["train", "--json-out", str(tmp_path / "x.json")], monkeypatch, capsys)
    assert code == 2 and f"folder {tmp_path} is not writable" in out


def _unreachable(*args, **kwargs):
    raise AssertionError("the run started although its options were invalid")


def test_plan_not_fitting_the_model_prints_no_stages(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli_module, "train", _unreachable)
    plan = _plan_file(tmp_path, end=13, micro_batches=4)
    code, out = _main(["train", "--plan", plan], monkeypatch, capsys)
    assert code == 1
    assert "error: plan covers layers [0, 13) but the model has 12 layers" in out
    assert "stage 0" not in out and "layers [6, 13)" not in out


def test_plan_sets_micro_batches(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    seen: dict = {}
    monkeypatch.setattr(cli_module, "train", _fake_train(seen))
    plan = _plan_file(tmp_path, end=12, micro_batches=2)
    code, out = _main(["train", "--plan", plan], monkeypatch, capsys)
    assert code == 1 and "stopped before training" in out
    assert seen["plan"].micro_batches == 2 and "pipeline  2 micro-batches" in out

    code, out = _main(["train", "--plan", plan, "--micro-batches", "2"], monkeypatch, capsys)
    assert code == 1 and "stopped before training" in out


def test_micro_batches_contradicting_the_plan_is_an_error(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli_module, "train", _unreachable)
    plan = _plan_file(tmp_path, end=12, micro_batches=2)
    code, out = _main(["train", "--plan", plan, "--micro-batches", "8"], monkeypatch, capsys)
    assert code == 2 and "--micro-batches" in out and "sets micro_batches 2" in out
    assert "stage 0" not in out


def test_a_hand_made_plan_has_four_micro_batches_by_default(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    seen: dict = {}
    monkeypatch.setattr(cli_module, "train", _fake_train(seen))
    code, _ = _main(["train", "--stages", "2"], monkeypatch, capsys)
    assert code == 1 and seen["plan"].micro_batches == 4
    code, _ = _main(["train", "--stages", "2", "--micro-batches", "8"], monkeypatch, capsys)
    assert code == 1 and seen["plan"].micro_batches == 8


def test_help_lists_the_real_storage_urls_and_the_plan_rule() -> None:
    result = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for url in ("local (", "local:///path", "redis://host:port/db", "s3://bucket/prefix"):
        assert url in text
    assert "memory" not in text.split("--storage", 1)[1].split("--bandwidth")[0]
    assert "with --plan the plan's micro_batches is used" in text


def test_an_optimizer_rejecting_its_options_is_an_error_not_a_traceback(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    args = ["train", "--lr", "-1", "--steps", "1", "--storage", f"local://{tmp_path / 'store'}"]
    code, out = _main(args, monkeypatch, capsys)
    assert code == 1 and "error:" in out and "learning rate" in out
    assert "Traceback" not in out and " step " not in out


def test_schedule_checks_a_plan_file(tmp_path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(
        '{"stages": [{"start": 0, "end": 4, "replicas": 2}, {"start": 4, "end": 9}], '
        '"micro_batches": 4}'
    )
    result = CliRunner().invoke(cli, ["schedule", "--plan", str(plan)])
    assert result.exit_code == 0, result.output
    assert "stage0-replica1" in result.output and "no deadlock" in result.output


def test_version() -> None:
    from funcpipe import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"funcpipe {__version__}"


def test_plan_command_prints_plan_baselines_and_writes_file(tmp_path, monkeypatch) -> None:
    from funcpipe.errors import PlanInfeasible
    from funcpipe.planning.plan import Plan

    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(
        cli, ["plan", "--model", "cnn", "--batch-size", "8", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "profiling cnn" in result.output
    for text in ("stage", "predicted", "per epoch", "tpdmp", "lambdaml", "bayes", "chosen"):
        assert text in result.output, text
    plan = Plan.from_json(out.read_text())
    assert plan.num_layers == 12
    again = CliRunner().invoke(cli, ["plan", "--model", "cnn", "--batch-size", "8",
                                     "--no-baselines", "--deadline", "1e-6"])  # fmt: skip
    assert isinstance(again.exception, PlanInfeasible)
    assert "deadline" in str(again.exception)
