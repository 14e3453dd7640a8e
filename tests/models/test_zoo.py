"""The zoo: shapes, full-size parameter counts, and that every layer boundary is a legal cut."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from funcpipe.errors import ConfigError
from funcpipe.models import build, list_models, masked_lm_loss, task_for

SMALL = [name for name in list_models() if name.endswith("-small")]

# (name, options, reference parameters, top-level layers); references in docs/models.md.
FULL_SIZE = [
    ("resnet101", {"num_classes": 1000}, 44.55e6, 35),
    ("amoebanet-d18", {"num_classes": 1000}, 122.5e6, 24),
    ("amoebanet-d36", {"num_classes": 1000}, 236.2e6, 42),
    ("bert-large", {}, 335.1e6, 26),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_names_cover_the_paper_models_and_small_variants() -> None:
    for name in ("resnet101", "amoebanet-d18", "amoebanet-d36", "bert-large"):
        assert name in list_models()
        assert f"{name}-small" in list_models()


@pytest.mark.parametrize(("name", "options", "reference", "layers"), FULL_SIZE)
def test_full_size_parameter_count_matches_reference(name, options, reference, layers) -> None:
    with torch.device("meta"):
        model = build(name, **options)
    params = sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once
    assert abs(params - reference) / reference < 0.01, params
    assert len(model) == layers
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", SMALL)
def test_small_model_forward_backward_shapes(name: str) -> None:
    model = build(name)
    loss_fn, make_batch = task_for(name)
    inputs, targets = make_batch(3, seed=1)
    out = model(inputs)
    if name.startswith("bert"):
        assert inputs.dtype == torch.int64
        assert out.shape == (*inputs.shape, model[-1].decoder.out_features)
    else:
        assert out.shape == (3, 10)
    loss = loss_fn(out, targets)
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, pname


@pytest.mark.parametrize("name", SMALL)
def test_small_variants_are_microbatch_independent(name: str) -> None:
    model = build(name)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))


def _is_boundary_value(value: object) -> bool:
    if isinstance(value, Tensor):
        return True
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, Tensor) for v in value)


def _detached(value: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    """What a stage receives from storage: fresh leaves, floats requiring grad."""

    def leaf(t: Tensor) -> Tensor:
        t = t.detach().clone()
        return t.requires_grad_() if t.is_floating_point() else t

    return tuple(leaf(t) for t in value) if isinstance(value, tuple) else leaf(value)


def _grads_through_cut(model: nn.Sequential, k: int, inputs: Tensor, targets, loss_fn):
    model.zero_grad()
    boundary = model[:k](inputs)
    received = _detached(boundary)
    loss = loss_fn(model[k:](received), targets)
    loss.backward()
    outs = boundary if isinstance(boundary, tuple) else (boundary,)
    ins = received if isinstance(received, tuple) else (received,)
    pairs = [(o, i.grad) for o, i in zip(outs, ins, strict=True) if i.grad is not None]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", SMALL)
def test_every_boundary_is_a_legal_cut(name: str) -> None:
    model = build(name).double()
    loss_fn, make_batch = task_for(name)
    inputs, targets = make_batch(2, seed=3)
    if inputs.is_floating_point():
        inputs = inputs.double()
    whole = model(inputs)
    model.zero_grad()
    loss_fn(whole, targets).backward()
    reference = [p.grad.clone() for p in model.parameters()]
    for k in range(1, len(model)):
        boundary = model[:k](inputs)
        assert _is_boundary_value(boundary), (k, type(boundary))
        assert torch.equal(model[k:](boundary), whole), k
        loss, grads = _grads_through_cut(model, k, inputs, targets, loss_fn)
        for g, r in zip(grads, reference, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


def test_masked_lm_loss_is_additive_over_samples() -> None:
    loss_fn, make_batch = task_for("bert-large-small")
    inputs, labels = make_batch(6, seed=2)
    logits = torch.randn(*labels.shape, 1000, dtype=torch.float64)
    whole = loss_fn(logits, labels)
    pairs = zip(logits.split(2), labels.split(2), strict=True)
    parts = [(loss_fn(lg, lb), len(lb)) for lg, lb in pairs]
    assert torch.allclose(whole, sum(v * n for v, n in parts) / 6, rtol=1e-12, atol=0)
    assert loss_fn is masked_lm_loss


def test_masked_lm_loss_rejects_sequences_without_masked_tokens() -> None:
    labels = torch.full((2, 4), -100)
    labels[0, 1] = 7
    with pytest.raises(ConfigError, match="at least one masked token"):
        masked_lm_loss(torch.randn(2, 4, 10), labels)


def test_make_batch_is_deterministic_per_seed() -> None:
    for name in ("resnet101-small", "bert-large-small"):
        _, make_batch = task_for(name)
        a, b, c = make_batch(4, seed=5), make_batch(4, seed=5), make_batch(4, seed=6)
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert not torch.equal(a[0], c[0])


def test_task_options_follow_the_model_options() -> None:
    _, make_batch = task_for("bert-large-small", vocab_size=50, seq_len=8)
    inputs, labels = make_batch(3)
    assert inputs.shape == (3, 8) and int(inputs.max()) < 50
    _, make_batch = task_for("resnet101-small", num_classes=3, image_size=16)
    inputs, targets = make_batch(5)
    assert inputs.shape == (5, 3, 16, 16) and int(targets.max()) < 3


def test_options_select_variants() -> None:
    model = build("resnet101", blocks=(1, 1), width=4, num_classes=7, norm="none")
    assert len(model) == 4
    assert model(torch.randn(1, 3, 8, 8)).shape == (1, 7)
    bert = build("bert-large", layers=1, hidden=8, heads=2, vocab_size=20, tie_weights=True)
    assert bert[0].word.weight is bert[-1].decoder.weight


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build("resnet50"), "unknown model 'resnet50'"),
        (lambda: build("resnet101", depth=3), "no option depth"),
        (lambda: build("resnet101-small", norm="layer"), "norm='layer'"),
        (lambda: build("amoebanet-d18", num_layers=4), "multiple of 3"),
        (lambda: build("bert-large", hidden=30, heads=4), "multiple of heads"),
        (lambda: task_for("bert-large-small", seq_len=100), "seq_len=100"),
    ],
)
def test_bad_options_are_named(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


def test_bert_rejects_float_inputs_and_long_sequences() -> None:
    model = build("bert-large-small")
    with pytest.raises(ConfigError, match="int64 token ids"):
        model(torch.randn(2, 8))
    with pytest.raises(ConfigError, match="max_positions"):
        model(torch.ones(1, 65, dtype=torch.int64))


def test_padding_is_masked_out_of_attention() -> None:
    model = build("bert-large-small").eval()
    ids = torch.randint(5, 1000, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(model(padded)[:, :10], model(ids), rtol=1e-5, atol=1e-5)


def test_layer_summary_matches_a_real_forward() -> None:
    from funcpipe.models import layer_summary

    model = build("amoebanet-d18-small")
    rows = layer_summary(model, torch.zeros(1, 3, 32, 32))
    assert model.training  # left in the mode it was in
    assert [r.name for r in rows] == [name for name, _ in model.named_children()]
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    value = torch.zeros(1, 3, 32, 32)
    for layer, row in zip(model, rows, strict=True):
        value = layer(value)
        outs = value if isinstance(value, tuple) else (value,)
        assert row.output_shapes == tuple(tuple(t.shape) for t in outs)
        assert row.output_bytes == sum(t.numel() * 4 for t in outs)
    tied = build("bert-large", layers=1, hidden=8, heads=2, vocab_size=20)
    rows = layer_summary(tied, torch.zeros(1, 4, dtype=torch.int64))
    assert sum(r.params for r in rows) == sum(p.numel() for p in tied.parameters())


def test_kind_of_names_the_data_each_model_trains_on() -> None:
    from funcpipe.models import kind_of

    assert {n: kind_of(n) for n in ("resnet101", "amoebanet-d36-small", "bert-large-small")} == {
        "resnet101": "image",
        "amoebanet-d36-small": "image",
        "bert-large-small": "mlm",
    }
    with pytest.raises(ConfigError, match="unknown model"):
        kind_of("vgg")
