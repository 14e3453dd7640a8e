"""`funcpipe train --eval-every`: validation on CIFAR-10's test batch through the same pipeline."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from funcpipe.client.cli import cli

pytestmark = pytest.mark.timeout(900)


def test_train_validates_every_k_steps_on_the_test_batch(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "history.json"
    result = CliRunner().invoke(
        cli,
        ["train", "--steps", "4", "--batch-size", "16", "--replicas", "1", "--latency-ms", "0",
         "--eval-every", "2", "--eval-samples", "40", "--checkpoint-every", "2",
         "--storage", f"local://{tmp_path / 'store'}", "--json-out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "validate  every 2 steps on synthetic CIFAR-10" in result.output
    assert "test batch (40 samples)" in result.output and "val loss" in result.output
    history = json.loads(out.read_text())["history"]
    scored = [h["step"] for h in history if h["val_loss"] is not None]
    assert scored == [1, 3]  # after 2 and after 4 steps (the last)
    for h in history:
        if h["val_loss"] is not None:
            assert h["val_loss"] > 0 and 0.0 <= h["val_accuracy"] <= 1.0
