"""StageRunner on its own: what a stage feeds its layers."""

from __future__ import annotations

import torch
from torch import nn

from funcpipe.runtime.stage import StageRunner


def _runner(layers: nn.Module) -> StageRunner:
    return StageRunner(
        layers, stage=1, is_first=False, is_last=False, loss_fn=nn.functional.mse_loss,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
    )  # fmt: skip


def test_only_a_stage_that_writes_into_its_input_is_fed_copies() -> None:
    """The first micro-batch shows whether the layers write in place; a stage that does not
    gets its received tensors themselves from then on (no copy, no extra memory)."""
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
