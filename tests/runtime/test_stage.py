"""StageRunner on its own: what a stage feeds its layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from funcpipe.errors import ConfigError
from funcpipe.runtime.stage import StageRunner


def _runner(layers: nn.Module) -> StageRunner:
    return StageRunner(
        layers, stage=1, is_first=False, is_last=False, loss_fn=nn.functional.mse_loss,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )  # fmt: skip


def test_only_a_stage_that_writes_into_its_input_is_fed_copies() -> None:
    """The first micro-batch shows whether the layers write in place; a stage that does not
    gets its received tensors themselves from then on (no more copies)."""
    plain = _runner(nn.Sequential(nn.Identity()))
    first, second = torch.randn(3, 4), torch.randn(3, 4)
    assert plain.forward(0, first).data_ptr() != first.data_ptr()
    assert plain.forward(1, second).data_ptr() == second.data_ptr()

    writer = _runner(nn.Sequential(nn.ReLU(inplace=True), nn.Linear(4, 2)))
    for mb in range(3):
        x = torch.randn(3, 4)
        expected = x.clone()
        writer.forward(mb, x)
        assert torch.equal(x, expected)  # the received tensor is left as it came
        (grad,) = writer.backward(mb, grads=(torch.ones(3, 2),))
        reference = expected.clone().requires_grad_()
        linear = writer.layers[1]
        nn.functional.linear(reference.relu(), linear.weight, linear.bias).backward(
            torch.ones(3, 2)
        )
        torch.testing.assert_close(grad, reference.grad)


class WritesOnItsSecondCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mul_(2) if self.calls == 2 else x * 2


def test_a_stage_that_writes_into_its_input_only_later_gets_a_clear_error() -> None:
    runner = _runner(nn.Sequential(WritesOnItsSecondCall(), nn.Linear(4, 2)))
    runner.forward(0, torch.randn(3, 4))
    with pytest.raises(ConfigError, match="stage 1 wrote into its input in place"):
        runner.forward(1, torch.randn(3, 4))


class TokensAndStates(nn.Module):
    """Takes (token ids, hidden states) and writes into the states."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, xs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, states = xs
        return states.add_(self.embed(ids))


def test_only_float_inputs_are_copied() -> None:
    runner = _runner(nn.Sequential(TokensAndStates(), nn.Linear(4, 2)))
    ids, states = torch.randint(0, 10, (3,)), torch.randn(3, 4)
    for mb in range(2):
        runner.forward(mb, (ids, states.clone()))
        (ids_grad, states_grad) = runner.backward(mb, grads=(torch.ones(3, 2),))
        assert ids_grad is None
        torch.testing.assert_close(states_grad, runner.layers[1].weight.sum(0).expand(3, 4))
