"""A trained model saves as safetensors and loads back into the user's own module."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from torch import nn

from funcpipe import LinkConfig, Plan, Stage, load_into, train
from funcpipe.client.cli import cli
from funcpipe.client.save import read_metadata
from funcpipe.errors import ConfigError
from funcpipe.models import to_sequential

FAST_LINK = LinkConfig(up_mb_s=500.0, down_mb_s=500.0, latency_s=0.0)


class Residual(nn.Module):
    """Not a Sequential: a skip connection, nested modules, a bare parameter and a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.norm = nn.LayerNorm(8)
        self.scale = nn.Parameter(torch.ones(8))
        self.register_buffer("shift", torch.full((8,), 0.1))
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.block(h)
        return self.out(self.norm(h) * self.scale + self.shift)


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)) for _ in range(n)]


def _train(seq: nn.Sequential, root, plan: Plan):
    return train(seq, nn.MSELoss(), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
                 batches=_batches(), plan=plan, storage=f"local://{root}", link=FAST_LINK,
                 progress=False, timeout_s=60)  # fmt: skip


def test_train_save_and_load_into_the_original_module(tmp_path) -> None:
    torch.manual_seed(0)
    original = Residual()
    seq = to_sequential(original, torch.randn(2, 6))
    n = len(seq)
    plan = Plan(stages=[Stage(start=0, end=n // 2, replicas=2), Stage(start=n // 2, end=n)],
                micro_batches=2)  # fmt: skip
    result = _train(seq, tmp_path / "store", plan)
    path = result.save(tmp_path / "model.safetensors")

    torch.manual_seed(123)  # a fresh module with other initial values
    fresh = Residual()
    x = torch.randn(5, 6)
    assert not torch.allclose(fresh(x), result.model(x))
    assert load_into(fresh, path) is fresh
    torch.testing.assert_close(fresh(x), result.model(x), rtol=0, atol=0)
    # and it really trained: the saved values are not the initial ones
    assert not torch.equal(fresh.inp.weight, original.inp.weight)

    again = to_sequential(Residual(), torch.randn(2, 6))  # the Sequential form loads directly
    load_into(again, path)
    torch.testing.assert_close(again(x), result.model(x), rtol=0, atol=0)

    meta = read_metadata(path)
    assert meta["job_id"] == result.job_id and meta["steps"] == 3
    assert meta["plan"] == json.loads(plan.to_json())
    assert meta["losses"] == result.losses
    assert set(load_file(str(path))) == set(result.model.state_dict())


def test_load_into_refuses_the_wrong_module(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    plan = Plan(stages=[Stage(start=0, end=2), Stage(start=2, end=3)], micro_batches=2)
    path = _train(model, tmp_path / "store", plan).save(tmp_path / "m.safetensors")
    with pytest.raises(
        ConfigError, match=r"0.bias: .* holds shape \(8,\) but Sequential has \(9,\)"
    ):
        load_into(nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 3)), path)
    with pytest.raises(ConfigError, match="has no values for 3.bias, 3.weight"):
        load_into(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 3)), path)
    with pytest.raises(ConfigError, match="does not have"):
        load_into(Residual(), path)
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_into(model, tmp_path / "missing.safetensors")


def test_unused_parameters_need_strict_false(tmp_path) -> None:
    class WithUnused(Residual):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Linear(2, 2)  # never used by forward(): to_sequential drops it

    torch.manual_seed(0)
    seq = to_sequential(WithUnused(), torch.randn(2, 6))
    plan = Plan(stages=[Stage(start=0, end=len(seq))], micro_batches=1)
    path = _train(seq, tmp_path / "store", plan).save(tmp_path / "m.safetensors")
    target = WithUnused()
    with pytest.raises(ConfigError, match="no values for spare.bias, spare.weight.*strict=False"):
        load_into(target, path)
    spare = target.spare.weight.detach().clone()
    load_into(target, path, strict=False)
    assert torch.equal(target.spare.weight, spare)


def test_cli_save(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FUNCPIPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "model.safetensors"
    result = CliRunner().invoke(
        cli,
        ["train", "--steps", "2", "--batch-size", "16", "--latency-ms", "0", "--replicas", "1",
         "--storage", f"local://{tmp_path / 'store'}", "--save", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"saved     {out}" in result.output
    from funcpipe.client.demo import make_job

    job = make_job("cnn", batch_size=16, data_dir=None, seed=0)
    load_into(job.model, out)
    assert read_metadata(out)["steps"] == 2
    bad = CliRunner().invoke(cli, ["train", "--save", str(tmp_path / "nope" / "m.safetensors")])
    assert bad.exit_code != 0 and "does not exist" in bad.output
