"""Checkpoints of a job at step boundaries: complete or absent, never half-visible.

A checkpoint of step ``t`` is the state *before* step ``t`` runs (``t`` steps done). Every function
of a generation writes its piece, then its manifest:

* replica 0 of a stage writes the stage's parameters and buffers, its optimizer's state and the
  torch random state (replicas of a stage are identical after a step, so one copy suffices);
* every other replica writes only the buffers it owns (BatchNorm statistics differ between
  replicas, parameters do not) and the random state.

Tensors go to one safetensors object, structure and scalars to JSON inside its metadata; nothing is
pickled. The manifest, written last, names the piece with its size and SHA-256, so a reader that
finds a manifest also finds a whole, intact piece. A checkpoint of step ``t`` is complete when the
manifests of *all* functions of one generation exist; readers ignore any other.

Keys (inside the job's namespace) carry the step and the generation that wrote them, so a late
write from a function of an older generation lands beside, never over, a live checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from funcpipe.errors import ConfigError, StorageError
from funcpipe.storage.base import Storage

__all__ = [
    "Checkpoint",
    "complete_checkpoints",
    "latest_checkpoint",
    "load_piece",
    "prune_checkpoints",
    "restore",
    "write_piece",
]

FORMAT = 1
ROOT = "ckpt/"
_MANIFEST = re.compile(r"^ckpt/step(\d+)/g(\d+)/s(\d+)r(\d+)/manifest\.json$")


def _dir(step: int, generation: int, stage: int, replica: int) -> str:
    return f"{ROOT}step{step:09d}/g{generation}/s{stage}r{replica}/"


def piece_key(step: int, generation: int, stage: int, replica: int) -> str:
    return _dir(step, generation, stage, replica) + "state.safetensors"


def manifest_key(step: int, generation: int, stage: int, replica: int) -> str:
    return _dir(step, generation, stage, replica) + "manifest.json"


@dataclass(frozen=True, order=True)
class Checkpoint:
    """A complete checkpoint: the job's state before ``step``, written by ``generation``."""

    step: int
    generation: int


# --- structure <-> JSON + tensors ------------------------------------------------------------


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """JSON for ``obj`` with every tensor moved into ``tensors`` (exact: int keys, tuples, nan)."""
    if isinstance(obj, torch.Tensor):
        name = f"optim/{path}"
        tensors[name] = obj.detach().to("cpu").clone().contiguous()
        return {"t": name}
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"f": repr(obj)}
    if isinstance(obj, dict):
        return {
            "d": [
                [_encode(k, tensors, f"{path}.k{i}"), _encode(v, tensors, f"{path}.{i}")]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if isinstance(obj, tuple):
        return {"u": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return {"l": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    raise ConfigError(
        f"the optimizer's state holds a {type(obj).__name__} at {path!r}, which a checkpoint "
        "cannot store without pickling; use an optimizer whose state is tensors and plain numbers"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        ((tag, value),) = obj.items()
        if tag == "t":
            return tensors[value]
        if tag == "f":
            return float(value)
        if tag == "d":
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
        if tag == "u":
            return tuple(_decode(v, tensors) for v in value)
        if tag == "l":
            return [_decode(v, tensors) for v in value]
        raise StorageError(f"unknown tag {tag!r} in a checkpoint")
    return obj


def _owned_buffers(layers: nn.Module) -> set[str]:
    params = {name for name, _ in layers.named_parameters()}
    return {name for name in layers.state_dict() if name not in params}


# --- writing ---------------------------------------------------------------------------------


def write_piece(
    storage: Storage,
    *,
    step: int,
    generation: int,
    stage: int,
    replica: int,
    layers: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    seed: int,
    before_manifest: Any = None,
) -> dict[str, Any]:
    """Write this function's part of the checkpoint of ``step``; the manifest goes last.

    ``before_manifest`` (a callable) runs between the piece and the manifest: the point where a
    crash leaves a piece without its manifest, which readers must ignore.
    """
    t0 = time.monotonic()
    tensors: dict[str, torch.Tensor] = {}
    state = layers.state_dict()
    names = list(state) if replica == 0 else sorted(_owned_buffers(layers))
    for name in names:
        tensors[f"model/{name}"] = state[name].detach().to("cpu").clone().contiguous()
    optim_json: Any = None
    if replica == 0 and optimizer is not None:
        optim_json = _encode(optimizer.state_dict(), tensors, "o")
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {
        "format": str(FORMAT),
        "step": str(step),
        "optimizer": json.dumps(optim_json),
    }
    data = save_tensors(tensors, metadata=meta)
    storage.put(piece_key(step, generation, stage, replica), data)
    if before_manifest is not None:
        before_manifest()
    manifest = {
        "format": FORMAT,
        "step": step,
        "generation": generation,
        "stage": stage,
        "replica": replica,
        "seed": seed,
        "data_position": step,  # batches consumed: one global batch per step
        "piece": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "written_s": time.monotonic() - t0,
    }
    storage.put(manifest_key(step, generation, stage, replica), json.dumps(manifest).encode())
    return manifest


# --- reading ---------------------------------------------------------------------------------


def complete_checkpoints(storage: Storage, functions: list[tuple[int, int]]) -> list[Checkpoint]:
    """Every complete checkpoint, oldest first: all of ``functions``' manifests exist."""
    found: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for key in storage.list(ROOT):
        m = _MANIFEST.match(key)
        if m:
            step, gen, s, r = (int(g) for g in m.groups())
            found.setdefault((step, gen), set()).add((s, r))
    wanted = set(functions)
    return sorted(Checkpoint(step, gen) for (step, gen), have in found.items() if wanted <= have)


def latest_checkpoint(storage: Storage, functions: list[tuple[int, int]]) -> Checkpoint | None:
    done = complete_checkpoints(storage, functions)
    return done[-1] if done else None


def load_piece(
    storage: Storage, ckpt: Checkpoint, stage: int, replica: int
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of one piece, checked against its manifest."""
    manifest = json.loads(storage.get(manifest_key(ckpt.step, ckpt.generation, stage, replica)))
    data = storage.get(piece_key(ckpt.step, ckpt.generation, stage, replica))
    want = manifest["piece"]
    if len(data) != want["bytes"] or hashlib.sha256(data).hexdigest() != want["sha256"]:
        raise StorageError(
            f"checkpoint of step {ckpt.step} (generation {ckpt.generation}), stage {stage} "
            f"replica {replica}: its piece does not match its manifest (corrupted storage)"
        )
    # safetensors' layout: 8-byte little-endian header length, then the JSON header.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return load_tensors(data), header.get("__metadata__", {})


def restore(
    storage: Storage,
    ckpt: Checkpoint,
    *,
    stage: int,
    replica: int,
    layers: nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> None:
    """Put ``layers`` and ``optimizer`` of (stage, replica) in the state of ``ckpt``."""
    tensors, meta = load_piece(storage, ckpt, stage, 0)
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    if replica != 0:
        own, _ = load_piece(storage, ckpt, stage, replica)
        model.update({k[len("model/") :]: v for k, v in own.items() if k.startswith("model/")})
        tensors["rng/torch"] = own["rng/torch"]
    with torch.no_grad():
        layers.load_state_dict(model, strict=True)
    optim_json = json.loads(meta.get("optimizer", "null"))
    if optimizer is not None and optim_json is not None:
        optimizer.load_state_dict(_decode(optim_json, tensors))
    torch.set_rng_state(tensors["rng/torch"])


def prune_checkpoints(storage: Storage, keep: Checkpoint) -> int:
    """Delete every checkpoint older than ``keep`` (and other generations' of the same step)."""
    doomed = set()
    for key in storage.list(ROOT):
        m = re.match(r"^ckpt/step(\d+)/g(\d+)/", key)
        if not m:
            continue
        step, gen = int(m.group(1)), int(m.group(2))
        if step <= keep.step and (step, gen) != (keep.step, keep.generation):
            doomed.add(key)
    for key in sorted(doomed):
        storage.delete(key)
    return len(doomed)
