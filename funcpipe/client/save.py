"""Saving a trained model as safetensors and loading it back into the user's own module.

The file holds ``result.model.state_dict()`` (names of the trained nn.Sequential) plus, in the
safetensors header, the plan and a few facts about the job as JSON. ``load_into`` accepts the
Sequential itself, an equal Sequential, or the original module that
``funcpipe.models.to_sequential`` converted: each piece of such a Sequential keeps the original
qualified names of its submodules and parameters under the piece's index, so ``"3.layer1.0.weight"``
maps back to ``"layer1.0.weight"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from funcpipe.errors import ConfigError

__all__ = ["load_into", "read_metadata", "save_model"]

_META_KEY = "funcpipe"
_FX_CONSTANT = "_tensor_constant"  # tensors torch.fx lifted out of forward(); not state


def save_model(model: nn.Module, path: str | os.PathLike[str], info: dict[str, Any]) -> Path:
    """Write ``model``'s state_dict to ``path`` atomically, with ``info`` as JSON metadata."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot save to {path}: folder {path.parent} does not exist")
    # Clones: safetensors refuses tensors sharing memory (tied weights); a tied pair is stored
    # twice and loads back into both places.
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", _META_KEY: json.dumps(info)}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON facts stored with a saved model (plan, job id, steps, losses)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file: {exc}") from exc
    return json.loads(meta[_META_KEY]) if _META_KEY in meta else {}


def _strip_piece(name: str) -> str | None:
    """'3.layer1.0.weight' -> 'layer1.0.weight'; None for names not under a piece index."""
    head, _, rest = name.partition(".")
    return rest if head.isdigit() and rest else None


def load_into(module: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load a model saved by ``TrainResult.save`` / ``funcpipe train --save`` into ``module``.

    ``module`` may be the trained nn.Sequential's architecture, or the original module that
    ``to_sequential`` converted. With ``strict``, every tensor of ``module`` must get a value
    and every saved tensor must find a place; ``strict=False`` leaves the missing ones (e.g.
    parameters the traced forward never used) as they are. Returns ``module``.
    """
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable safetensors file: {exc}") from exc
    target = module.state_dict()
    if saved.keys() <= target.keys():
        mapped = saved
    else:
        mapped = {}
        for name, value in saved.items():
            original = _strip_piece(name)
            if original is None or original.rpartition(".")[2].startswith(_FX_CONSTANT):
                if original is None and strict:
                    raise ConfigError(
                        f"{path} holds {name!r}, which {type(module).__name__} does not have; "
                        "load it into the module the model was trained from"
                    )
                continue
            mapped[original] = value
    unknown = sorted(set(mapped) - set(target))
    missing = sorted(set(target) - set(mapped))
    if unknown:
        raise ConfigError(
            f"{path} holds tensors {type(module).__name__} does not have: {_few(unknown)}; "
            "load it into the module the model was trained from (or its to_sequential form)"
        )
    if missing and strict:
        raise ConfigError(
            f"{path} has no values for {_few(missing)} of {type(module).__name__}; if those are "
            "unused by forward() (to_sequential drops them), pass strict=False to keep their "
            "current values"
        )
    for name, value in mapped.items():
        if target[name].shape != value.shape:
            raise ConfigError(
                f"{name}: {path} holds shape {tuple(value.shape)} but {type(module).__name__} "
                f"has {tuple(target[name].shape)}; was the module built with other sizes?"
            )
    with torch.no_grad():
        module.load_state_dict(mapped, strict=False)
    return module


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
