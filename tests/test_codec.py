"""Round trips through the safetensors codec, and rejection of bytes it did not write."""

from __future__ import annotations

import warnings

import pytest
import torch

from funcpipe.codec import DecodeError, decode, encode
from funcpipe.errors import ConfigError, FuncPipeError

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
          torch.int8, torch.uint8, torch.bool]  # fmt: skip


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=g) * 50).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (7,), (2, 3, 4)])
def test_single_tensor_round_trip(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    value = _sample(dtype, shape)
    out, meta = decode(encode(value))
    assert isinstance(out, torch.Tensor)
    assert out.dtype == dtype and out.shape == value.shape
    assert torch.equal(out, value)
    assert meta == {}


def test_tuple_with_none_entries_keeps_positions() -> None:
    a, b = torch.arange(6).reshape(2, 3), torch.randn(4)
    out, _ = decode(encode((None, a, None, b, None)))
    assert isinstance(out, tuple) and len(out) == 5
    assert out[0] is None and out[2] is None and out[4] is None
    assert torch.equal(out[1], a) and torch.equal(out[3], b)


@pytest.mark.parametrize("value", [(), (None,), (torch.ones(1),)])
def test_degenerate_tuples(value: tuple) -> None:
    out, _ = decode(encode(value))
    assert isinstance(out, tuple) and len(out) == len(value)
    for x, y in zip(out, value, strict=True):
        assert (x is None and y is None) or torch.equal(x, y)


def test_non_contiguous_and_shared_views_are_encoded() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    out, _ = decode(encode((base.t(), base[0], base[1])))
    assert torch.equal(out[0], base.t())
    assert torch.equal(out[1], base[0]) and torch.equal(out[2], base[1])


def test_requires_grad_tensor_is_detached() -> None:
    value = torch.randn(3, requires_grad=True)
    out, _ = decode(encode(value * 2))
    assert not out.requires_grad
    assert torch.equal(out, (value * 2).detach())


def test_decoded_tensors_are_writable_without_warnings() -> None:
    data = encode((torch.randn(5), torch.zeros(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (a, b), _ = decode(data)
        a += 1
        a[0] = 7.0
    assert a[0].item() == 7.0
    assert a.untyped_storage().data_ptr() != 0


def test_user_metadata_round_trips_and_is_separate() -> None:
    meta = {"step": "3", "kind": "activation"}
    out, back = decode(encode(torch.ones(2), meta))
    assert back == meta


def test_reserved_metadata_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="reserved"):
        encode(torch.ones(1), {"funcpipe.kind": "x"})
    with pytest.raises(ConfigError, match="str"):
        encode(torch.ones(1), {"a": 1})  # type: ignore[dict-item]


@pytest.mark.parametrize("value", [[torch.ones(1)], {"a": torch.ones(1)}, 3.0, (torch.ones(1), 2)])
def test_non_tensor_payloads_are_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="encode"):
        encode(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"\xff" * 64, encode(torch.ones(4))[:-3], encode(torch.ones(4))[:20]],
)
def test_corrupt_bytes_raise_funcpipe_error(data: bytes) -> None:
    with pytest.raises(FuncPipeError, match="decode"):
        decode(data)


def test_foreign_safetensors_are_refused() -> None:
    from safetensors.torch import save

    with pytest.raises(DecodeError, match="not written by funcpipe"):
        decode(save({"weight": torch.ones(2)}))


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float8_e4m3fnuz])
def test_unsupported_dtypes_are_named(dtype: torch.dtype) -> None:
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ConfigError, match=rf"value\[1\] has dtype {name}.*float32.*bfloat16"):
        encode((torch.ones(2), torch.zeros(2, dtype=dtype)))
