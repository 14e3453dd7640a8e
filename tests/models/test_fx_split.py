"""to_sequential: equal outputs and gradients, legal cuts, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from funcpipe.errors import ConfigError
from funcpipe.models import to_sequential


class WithSkip(nn.Module):
    """A value (x and h) skips over later layers; a Python int and a bare parameter too."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)
        self.d = nn.Linear(8, 4)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 8))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        y = torch.tanh(self.b(h)) * self.scale
        y = self.c(y) + x
        return self.d(y + h)


class WithBranches(nn.Module):
    """Two branches from one input, merged by concatenation, then a residual over the merge."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.left = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU())
        self.merge = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stem(x)
        both = torch.cat([self.left(s), self.right(s)], dim=1)
        out = self.merge(both) + s
        return self.head(out.mean(dim=(2, 3)))


class WithKeywords(nn.Module):
    """Keyword arguments in forward() (defaults) and in calls inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.ff = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8, eps=1e-6)

    def forward(self, x: Tensor, scale: float = 0.5, *, gate: bool = True) -> Tensor:
        a, _ = self.attn(x, x, x, need_weights=False)
        h = self.norm(x + a * scale)
        f = F.gelu(self.ff(h), approximate="tanh")
        if gate:  # a Python flag, fixed by its default at trace time
            f = f * torch.sigmoid(h)
        return torch.sum(h + f, dim=1, keepdim=False)


class SharedLayer(nn.Module):
    """The same Linear applied twice: its parameters must stay in one piece."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 6)
        self.shared = nn.Linear(6, 6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.shared(self.mid(self.shared(self.inp(x)))))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return self.lin(x)
        return x


CASES = [
    (WithSkip, lambda: torch.randn(5, 8)),
    (WithBranches, lambda: torch.randn(2, 3, 6, 6)),
    (WithKeywords, lambda: torch.randn(2, 5, 8)),
    (SharedLayer, lambda: torch.randn(3, 6)),
]


def _grads(module: nn.Module, x: Tensor, piece_prefix: bool) -> tuple[Tensor, dict, Tensor]:
    """Output, gradients by the original's parameter name, and the input's gradient."""
    x = x.clone().requires_grad_()
    out = module(x)
    (out * torch.arange(out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
    grads = {
        (name.split(".", 1)[1] if piece_prefix else name): p.grad
        for name, p in module.named_parameters()
    }
    return out.detach(), grads, x.grad


@pytest.mark.parametrize(("cls", "make_input"), CASES, ids=[c[0].__name__ for c in CASES])
def test_equal_outputs_and_gradients(cls, make_input) -> None:
    torch.manual_seed(0)
    module = cls().double()
    x = make_input().double()
    seq = to_sequential(module, x)
    assert isinstance(seq, nn.Sequential) and len(seq) >= 3
    out_ref, grads_ref, xgrad_ref = _grads(module, x, piece_prefix=False)
    out, grads, xgrad = _grads(seq, x, piece_prefix=True)  # pieces keep the original names
    assert torch.equal(out, out_ref)
    assert torch.equal(xgrad, xgrad_ref)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        assert torch.equal(g, grads_ref[name]), name


@pytest.mark.parametrize(("cls", "make_input"), CASES, ids=[c[0].__name__ for c in CASES])
def test_every_piece_boundary_is_a_legal_cut(cls, make_input) -> None:
    torch.manual_seed(0)
    module = cls()
    x = make_input()
    seq = to_sequential(module, x)
    whole = seq(x)
    for k in range(1, len(seq)):
        mid = seq[:k](x)
        values = mid if isinstance(mid, tuple) else (mid,)
        assert all(isinstance(v, Tensor) for v in values), k
        assert torch.equal(seq[k:](mid), whole), k


def test_skip_values_are_carried_as_tuples() -> None:
    seq = to_sequential(WithSkip(), torch.randn(2, 8))
    carried = [seq[:k](torch.randn(2, 8)) for k in range(1, len(seq))]
    assert any(isinstance(v, tuple) and len(v) >= 2 for v in carried)


def test_no_parameter_is_split_across_pieces() -> None:
    seq = to_sequential(SharedLayer(), torch.randn(3, 6))
    owners: dict[int, int] = {}
    for k, piece in enumerate(seq):
        for p in piece.parameters():
            assert owners.setdefault(id(p), k) == k
    assert sum(p.numel() for p in seq.parameters()) == sum(
        p.numel() for p in SharedLayer().parameters()
    )


def test_result_does_not_share_parameters_with_the_original() -> None:
    module = WithSkip()
    seq = to_sequential(module, torch.randn(2, 8))
    originals = {id(p) for p in module.parameters()}
    assert not any(id(p) in originals for p in seq.parameters())


def test_data_dependent_control_flow_is_named() -> None:
    with pytest.raises(ConfigError, match=r"DataDependent.*control flow.*test_fx_split\.py:\d+"):
        to_sequential(DataDependent(), torch.randn(2, 4))


def test_missing_input_is_named() -> None:
    class TwoInputs(nn.Module):
        def forward(self, x: Tensor, y: Tensor) -> Tensor:
            return x + y

    with pytest.raises(ConfigError, match="parameter 'y' has no default"):
        to_sequential(TwoInputs(), torch.randn(2))
    seq = to_sequential(TwoInputs(), (torch.ones(2), torch.ones(2)))
    assert torch.equal(seq((torch.ones(2), torch.ones(2))), torch.full((2,), 2.0))


def test_bad_example_input() -> None:
    with pytest.raises(ConfigError, match="example_input"):
        to_sequential(WithSkip(), [torch.randn(2, 8)])  # type: ignore[arg-type]


class WithNormAndDropout(nn.Module):
    """BatchNorm keeps running statistics and Dropout draws from the global RNG in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.norm = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.drop(self.norm(self.a(x))))


def test_tracing_leaves_buffers_and_the_global_rng_untouched() -> None:
    torch.manual_seed(0)
    module = WithNormAndDropout()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    example = torch.randn(8, 6) * 3 + 1
    rng = torch.get_rng_state()
    seq = to_sequential(module, example)
    assert torch.equal(torch.get_rng_state(), rng)
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name
    buffers = {name.split(".", 1)[1]: b for name, b in seq.named_buffers()}
    assert buffers.keys() == dict(module.named_buffers()).keys()
    for name, b in buffers.items():
        assert torch.equal(b, before[name]), name
    module.eval()
    seq.eval()
    x = torch.randn(4, 6)
    assert torch.equal(seq(x), module(x))


class WithNoneDefault(nn.Module):
    """A forward() argument defaulting to None: fx guards it with an _assert_is_none node."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            x = x * mask
        return self.b(torch.relu(self.a(x)))


def test_a_none_default_leaves_no_empty_piece() -> None:
    torch.manual_seed(0)
    module = WithNoneDefault()
    x = torch.randn(2, 4)
    seq = to_sequential(module, x)
    assert len(seq) == 2  # one piece per Linear, nothing before the first
    for piece in seq:
        assert any(n.op == "call_module" for n in piece.graph.nodes), piece.code
    assert not any("_assert_is_none" in piece.code for piece in seq)
    assert torch.equal(seq(x), module(x))
