"""Tensors <-> bytes for everything that goes through storage, as safetensors and never pickle.

Unpickling bytes written by another function would let whoever can write to the bucket run code;
safetensors is data only. The payload layout (one tensor, or a tuple with holes) lives in the
header's metadata under reserved ``funcpipe.*`` keys, next to the caller's own metadata.
"""

from __future__ import annotations

import json
import struct

import torch
from safetensors import SafetensorError, deserialize
from safetensors.torch import save

from funcpipe.errors import ConfigError, FuncPipeError

__all__ = ["DecodeError", "Payload", "decode", "encode"]

Payload = torch.Tensor | tuple[torch.Tensor | None, ...]

_RESERVED = "funcpipe."
_KIND = _RESERVED + "kind"
_LEN = _RESERVED + "len"
_NONE = _RESERVED + "none"


class DecodeError(FuncPipeError, ValueError):
    """Bytes are not a payload written by :func:`encode` (corrupt, truncated or foreign)."""


def _prepare(tensor: object, where: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ConfigError(
            f"encode: {where} is a {type(tensor).__name__}, expected a torch.Tensor "
            "(or None inside a tuple)"
        )
    if tensor.layout != torch.strided:
        raise ConfigError(f"encode: {where} is {tensor.layout}; call .to_dense() first")
    if tensor.dtype not in _ENCODABLE:  # also those safetensors writes but decode cannot read
        raise ConfigError(
            f"encode: {where} has dtype {str(tensor.dtype).removeprefix('torch.')}, which the "
            f"codec cannot store; convert it to one of: {', '.join(_DTYPES.values())}"
        )
    return tensor.detach().cpu().contiguous()


def encode(value: Payload, meta: dict[str, str] | None = None) -> bytes:
    """Serialize one tensor or a tuple of tensors/None, plus str->str metadata, to bytes."""
    user = dict(meta or {})
    for k, v in user.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(f"encode: meta must map str to str, got {k!r}: {v!r}")
        if k.startswith(_RESERVED):
            raise ConfigError(f"encode: meta key {k!r} uses the reserved prefix {_RESERVED!r}")
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(value, torch.Tensor):
        tensors["0"] = _prepare(value, "value")
        user[_KIND] = "tensor"
    elif isinstance(value, tuple):
        holes = []
        for i, item in enumerate(value):
            if item is None:
                holes.append(str(i))
            else:
                tensors[str(i)] = _prepare(item, f"value[{i}]")
        user.update({_KIND: "tuple", _LEN: str(len(value)), _NONE: ",".join(holes)})
    else:
        raise ConfigError(
            f"encode: value is a {type(value).__name__}; expected a torch.Tensor or a tuple "
            "of tensors/None"
        )
    # Two entries may view one storage (e.g. slices of one gradient); clone those so
    # safetensors sees independent buffers.
    seen: set[int] = set()
    for name, t in tensors.items():
        if t.numel() == 0:
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[name] = t.clone()
        seen.add(ptr)
    try:
        return save(tensors, metadata=user)
    except (SafetensorError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"encode: safetensors cannot store this payload: {exc}") from exc


def _header_metadata(data: bytes) -> dict[str, str]:
    (size,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(bytes(data[8 : 8 + size]))
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise DecodeError("decode: safetensors header has a malformed __metadata__ entry")
    return meta


def _to_tensor(view: dict) -> torch.Tensor:
    # The tensor must own writable memory: frombuffer over a bytearray we own, copied once.
    dtype = getattr(torch, _DTYPES[view["dtype"]])
    shape = list(view["shape"])
    buf = view["data"]
    if len(buf) == 0:
        return torch.empty(shape, dtype=dtype)
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "C64": "complex64",
}
_ENCODABLE = frozenset(getattr(torch, name) for name in _DTYPES.values())


def decode(data: bytes) -> tuple[Payload, dict[str, str]]:
    """Inverse of :func:`encode`: returns the payload and the caller's metadata."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ConfigError(f"decode: expected bytes, got {type(data).__name__}")
    try:
        views = dict(deserialize(bytes(data)))
        meta = _header_metadata(data)
    except (SafetensorError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(
            f"decode: {len(data)} bytes are not a valid safetensors payload ({exc})"
        ) from exc
    kind = meta.pop(_KIND, None)
    length, holes = meta.pop(_LEN, None), meta.pop(_NONE, None)
    try:
        tensors = {name: _to_tensor(v) for name, v in views.items()}
    except (KeyError, AttributeError) as exc:
        raise DecodeError(f"decode: unsupported tensor dtype {exc}") from exc
    if kind == "tensor" and set(tensors) == {"0"}:
        return tensors["0"], meta
    if kind == "tuple" and length is not None and holes is not None:
        try:
            n = int(length)
            none_at = {int(i) for i in holes.split(",") if i}
        except ValueError as exc:
            raise DecodeError(f"decode: malformed tuple layout in metadata ({exc})") from exc
        expected = {str(i) for i in range(n) if i not in none_at}
        if set(tensors) == expected and all(0 <= i < n for i in none_at):
            return tuple(tensors.get(str(i)) for i in range(n)), meta
    raise DecodeError(
        "decode: safetensors data was not written by funcpipe.codec.encode "
        f"(layout metadata kind={kind!r}, tensors={sorted(tensors)})"
    )
