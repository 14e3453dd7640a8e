"""The job package: everything one function needs, as data.

A platform ships one :class:`FunctionPackage` (JSON) per function and starts
:func:`funcpipe.runtime.function.run` on it; nothing else crosses from the client to a function.
So local processes, Lithops and AWS Lambda differ only in how they start a process.

User code travels the way Python's serverless ecosystem ships code:

* by **import reference** (``{"import": "package.module:attr"}``) when it lives in an installed
  package that the function's image has too, or
* **serialised with cloudpickle inside the payload** the client itself sends
  (``{"pickle": ...}``), so a layer class, loss or optimizer lambda defined in the user's own
  script works. Modules outside site-packages are pickled by value, since a function's image
  does not hold the user's files.

Tensors never travel pickled: the pickler swaps every tensor for a numbered placeholder and the
tensors go to safetensors (the stage's weights to the job's storage, the few small tensors a loss
may hold inline). Nothing a function reads from storage is ever unpickled.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import io
import json
import os
import pickle
import sys
import sysconfig
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from funcpipe.errors import ConfigError

__all__ = ["FunctionPackage", "pack_object", "unpack_object", "code_ref"]

PACKAGE_VERSION = 1


@dataclass(frozen=True)
class FunctionPackage:
    """What one function of a job receives; plain JSON-able data.

    ``generation`` counts relaunches: keys a generation writes carry it, so a late write from a
    function of an older generation can never be read as a live one. The function trains steps
    ``first_step .. end_step - 1``.
    """

    job_id: str
    # Credentials belong in the environment / provider chains (FUNCPIPE_REDIS_PASSWORD, AWS's
    # chain), not here; a URL that carries one anyway is never shown in a repr.
    storage_url: str = field(repr=False)
    plan: dict[str, Any]
    stage: int
    replica: int
    first_step: int
    end_step: int
    seed: int
    timeout_s: float
    code: dict[str, dict[str, Any]]  # "layers", "loss", "optimizer" -> code reference
    link: dict[str, Any] | None = None  # the emulated storage link; None: the real one as is
    generation: int = 0
    sync_algorithm: str = "pipelined"
    overlap: bool = True
    data: dict[str, Any] | None = None  # a data set in storage; None: the client feeds batches
    settings: dict[str, Any] = field(default_factory=dict)
    # This function's lowered action lists as the client checked them, one action a line
    # (funcpipe.schedule.parse_action reads them): what is checked is what runs.
    actions: list[str] = field(default_factory=list)
    eval_actions: list[str] = field(default_factory=list)
    version: int = PACKAGE_VERSION

    @property
    def name(self) -> str:
        return f"stage{self.stage}-replica{self.replica}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, Any]) -> FunctionPackage:
        raw = data if isinstance(data, dict) else json.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != PACKAGE_VERSION:
            raise ConfigError(
                f"not a FuncPipe function package of version {PACKAGE_VERSION} (got "
                f"{raw.get('version') if isinstance(raw, dict) else type(raw).__name__!r}); the "
                "function's image runs another FuncPipe version than the client: redeploy it"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ConfigError(f"function package has unknown fields {unknown}; redeploy")
        return cls(**raw)


# --- code references ------------------------------------------------------------------------------


def code_ref(ref: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A reference to ``"package.module:attr"`` called with JSON-able ``args``/``kwargs``.

    ``code_ref("funcpipe.models:build", "resnet101-small")`` builds the object inside the
    function from its own installed code; no pickling at all.
    """
    if ":" not in ref:
        raise ConfigError(f"import reference {ref!r} must look like 'package.module:attr'")
    out: dict[str, Any] = {"import": ref}
    if args or kwargs:
        out["args"], out["kwargs"] = list(args), dict(kwargs)
        json.dumps(out)  # fail here, not in the function, if they are not JSON-able
    return out


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def _register_local_modules() -> None:
    """Pickle code from modules outside site-packages and the stdlib by value.

    A function's image has FuncPipe and its dependencies installed but not the user's files, so a
    class from ``my_model.py`` next to the user's script must travel by value.
    """
    roots = _installed_roots()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or name == "__main__" or name.split(".")[0] in ("funcpipe", "torch"):
            continue
        if os.path.realpath(path).startswith(roots):
            continue
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:  # not importable under that name (e.g. a test module); by reference
            continue


class _Pickler(cloudpickle.Pickler):
    """cloudpickle with every tensor replaced by a placeholder (the tensor data goes elsewhere)."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[torch.Tensor] = []
        self._index: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> Any:  # noqa: D102 - pickle hook
        if not isinstance(obj, torch.Tensor):
            return None
        key = id(obj)
        if key not in self._index:
            self._index[key] = len(self.tensors)
            self.tensors.append(obj)
        return ("tensor", self._index[key], isinstance(obj, nn.Parameter), obj.requires_grad)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__(file)
        self._tensors = tensors
        self._made: dict[int, torch.Tensor] = {}

    def persistent_load(self, pid: Any) -> torch.Tensor:  # noqa: D102 - pickle hook
        kind, index, is_param, requires_grad = pid
        if kind != "tensor":
            raise pickle.UnpicklingError(f"unknown placeholder {kind!r}")
        if index not in self._made:
            t = self._tensors[str(index)]
            self._made[index] = (
                nn.Parameter(t, requires_grad=requires_grad)
                if is_param
                else t.requires_grad_(requires_grad)
            )
        return self._made[index]


def pack_object(obj: Any) -> tuple[bytes, bytes]:
    """``obj`` as (cloudpickle bytes without tensor data, safetensors bytes of its tensors)."""
    _register_local_modules()
    buf = io.BytesIO()
    pickler = _Pickler(buf)
    try:
        pickler.dump(obj)
    except Exception as exc:
        raise ConfigError(
            f"cannot serialise {type(obj).__name__} for the functions ({type(exc).__name__}: "
            f"{exc}); define it at module level or pass an import reference "
            "(funcpipe.runtime.package.code_ref('package.module:attr'))"
        ) from exc
    tensors = {
        str(i): t.detach().to("cpu").clone().contiguous() for i, t in enumerate(pickler.tensors)
    }
    return buf.getvalue(), save_tensors(tensors)


def unpack_object(pickled: bytes, tensors: bytes) -> Any:
    """Inverse of :func:`pack_object`; ``pickled`` must come from the invocation payload."""
    return _Unpickler(io.BytesIO(pickled), load_tensors(tensors)).load()


def inline_ref(obj: Any) -> dict[str, Any]:
    """A code reference carrying ``obj`` itself (pickled, tensors inline as safetensors)."""
    pickled, tensors = pack_object(obj)
    return {
        "pickle": base64.b64encode(pickled).decode("ascii"),
        "tensors": base64.b64encode(tensors).decode("ascii"),
    }


def resolve(ref: dict[str, Any], tensors: bytes | None = None) -> Any:
    """Build the object a code reference names; ``tensors`` overrides inline tensors."""
    if "import" in ref:
        module_name, _, attr = ref["import"].partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"cannot import {ref['import']!r} inside the function ({exc}); install that "
                "package in the function's image or pass the object itself"
            ) from exc
        if "args" in ref or "kwargs" in ref:
            target = target(*ref.get("args", []), **ref.get("kwargs", {}))
        return target
    if "pickle" in ref:
        blob = tensors if tensors is not None else base64.b64decode(ref.get("tensors", ""))
        return unpack_object(base64.b64decode(ref["pickle"]), blob or save_tensors({}))
    raise ConfigError(f"unknown code reference with keys {sorted(ref)}")
