"""The main job as a user runs it: `funcpipe train` and friends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from funcpipe.client.cli import cli


def test_train_demo_learns_and_reports(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "history.json"
    result = CliRunner().invoke(
        cli,
        ["train", "--steps", "8", "--batch-size", "32", "--latency-ms", "0",
         "--storage", f"local://{tmp_path / 'store'}", "--json-out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "layers [0, 6) on 2 function(s) of 2048 MB" in result.output
    assert "synthetic CIFAR-10 in the real file format" in result.output
    history = json.loads(out.read_text())["history"]
    assert len(history) == 8
    assert history[-1]["loss"] < history[0]["loss"]
    assert all(h["cost_usd"] > 0 and h["iteration_s"] > 0 for h in history)
    written = tmp_path / "cache" / "cifar10-synthetic" / "data_batch_1.bin"
    assert written.stat().st_size % 3073 == 0


def test_schedule_command_prints_and_checks() -> None:
    result = CliRunner().invoke(cli, ["schedule", "--stages", "3", "--replicas", "1,2,3"])
    assert result.exit_code == 0, result.output
    assert "stage2-replica2" in result.output and "no deadlock" in result.output


def test_models_command_lists_the_zoo() -> None:
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0
    assert {"cnn", "resnet101-small", "bert-large"} <= set(result.output.split())


def test_bad_input_exits_with_a_clear_message(tmp_path) -> None:
    env = {**os.environ, "FUNCPIPE_CACHE": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "funcpipe.client.cli", "train", "--data-dir", str(tmp_path / "no")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "data_batch_1.bin is missing" in proc.stderr
    assert "Traceback" not in proc.stderr
