"""The history streams to CSV and TensorBoard while training, step by step."""

from __future__ import annotations

import csv
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from funcpipe import LinkConfig, Plan, Stage, train
from funcpipe.client.cli import cli
from funcpipe.client.history_log import CSV_NAME, HistoryLog
from funcpipe.errors import ConfigError

FAST_LINK = LinkConfig(up_mb_s=500.0, down_mb_s=500.0, latency_s=0.0)


def _rows(log_dir) -> list[dict[str, str]]:
    path = log_dir / CSV_NAME
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _scalars(log_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_history_streams_while_training(tmp_path) -> None:
    log_dir = tmp_path / "runs" / "a"
    seen: dict[int, int] = {}  # batch index -> CSV rows on disk when it was asked for

    def batches():
        g = torch.Generator().manual_seed(1)
        for i in range(6):
            seen[i] = len(_rows(log_dir))
            yield torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    plan = Plan(stages=[Stage(start=0, end=2), Stage(start=2, end=3, replicas=2)], micro_batches=2)
    result = train(model, nn.MSELoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                   batches=batches(), plan=plan, steps=6, storage=f"local://{tmp_path / 's'}",
                   link=FAST_LINK, progress=False, timeout_s=60, log_dir=log_dir)  # fmt: skip
    # Batch k is fed once step k-2 has reported, after steps 0..k-3 were written.
    assert seen[4] >= 2 and seen[5] >= 3
    rows = _rows(log_dir)
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert [float(r["loss"]) for r in rows] == pytest.approx(result.losses, rel=1e-12)
    assert {"iteration_s", "cost_usd", "bytes_up", "requests", "skipped"} <= set(rows[0])
    losses = _scalars(log_dir, "train/loss")
    assert [s for s, _ in losses] == list(range(6))
    assert [v for _, v in losses] == pytest.approx(result.losses, rel=1e-6)
    total = _scalars(log_dir, "train/total_cost_usd")[-1][1]
    assert total == pytest.approx(result.total_cost_usd, rel=1e-6)


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'funcpipe\[tensorboard\]'"):
        HistoryLog(tmp_path / "logs")
    assert not (tmp_path / "logs" / CSV_NAME).exists()


def test_cli_log_dir(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(
        cli,
        ["train", "--steps", "2", "--batch-size", "16", "--latency-ms", "0", "--replicas", "1",
         "--storage", f"local://{tmp_path / 'store'}", "--log-dir", str(tmp_path / "logs")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in _rows(tmp_path / "logs")] == ["0", "1"]
    assert len(_scalars(tmp_path / "logs", "train/iteration_s")) == 2
