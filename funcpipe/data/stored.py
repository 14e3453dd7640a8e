"""Data sets kept in storage, so functions read their own micro-batches and the client leaves the
data path.

``upload_dataset`` puts a data set into storage once, as safetensors shards of ``shard_samples``
consecutive samples plus an index JSON (never pickle); ``read_micro_batch`` then gives one
function exactly its micro-batch of step ``t``, reading only the one or two shards that hold it.

Sample order: the samples are stored in one fixed order (the source's, or shuffled once at upload
with ``shuffle_seed``), and step ``t`` takes the ``t mod (N // batch_size)``-th run of
``batch_size`` consecutive samples (the last partial batch of an epoch is dropped, as with
``Batches(drop_last=True)``); its micro-batches are ``torch.tensor_split`` of that batch into
``micro_batches`` parts, exactly the split ``train()`` makes of a client-fed batch. So training
from storage equals training on the batches of :func:`stored_batches` (built from the same
micro-batch reads, Wikitext-2 masks included).

The data ref (a small JSON-able dict, what a job package carries as ``data``)::

    {
      "format": "funcpipe-dataset/1",
      "prefix": "datasets/<name>",   # keys: <prefix>/index.json, <prefix>/shard-00000, ...
      "name": "<name>",
      "kind": "cifar10" | "wikitext2" | "tensors",
                                      # cifar10: uint8 images, normalised to float32 at read;
                                      # wikitext2: token sequences, masked at read per
                                      # micro-batch (then also "vocab_size",
                                      # "mask_probability")
      "samples": N,                   # number of samples
      "shard_samples": S,             # samples per shard (the last shard may hold fewer)
      "shards": ceil(N / S),
    }

Keys live under ``datasets/<name>/`` of the storage root (outside every job's ``jobs/<id>/``),
so one upload serves many jobs; pass the root storage, not a job's prefixed view.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from funcpipe.data.batches import _generator
from funcpipe.data.cifar10 import Cifar10, normalize
from funcpipe.data.masking import mask_tokens
from funcpipe.data.wikitext import SPLIT_FILES, WikiText2
from funcpipe.errors import ConfigError
from funcpipe.storage import Storage, open_storage, validate_key

__all__ = [
    "FORMAT",
    "read_micro_batch",
    "stored_batches",
    "upload_dataset",
]

FORMAT = "funcpipe-dataset/1"
KINDS = ("cifar10", "wikitext2", "tensors")
DEFAULT_SHARD_SAMPLES = 256


def _shard_key(prefix: str, i: int) -> str:
    return f"{prefix}/shard-{i:05d}"


def _load_source(
    source: Any, kind: str | None, text: dict[str, int]
) -> tuple[str, Tensor, Tensor, dict[str, Any]]:
    """(kind, inputs, targets, extra ref fields) from a CIFAR-10 or Wikitext-2 directory, a
    Cifar10, a WikiText2, a pair of tensors, or a .safetensors file with 'inputs' and
    'targets'. ``text`` holds seq_len and vocab_size for a Wikitext-2 directory."""
    if isinstance(source, Cifar10):
        return "cifar10", source.images, source.labels, {}
    if isinstance(source, WikiText2):
        # Labels come from masking at read time: nothing to store for targets.
        extra = {"vocab_size": source.vocab_size, "mask_probability": 0.15}
        empty = torch.empty((len(source), 0), dtype=torch.int64)
        return "wikitext2", source.sequences, empty, extra
    if isinstance(source, tuple) and len(source) == 2:
        inputs, targets = source
        if not (isinstance(inputs, Tensor) and isinstance(targets, Tensor)):
            raise ConfigError("a data set given as a pair must be two tensors (inputs, targets)")
        return kind or "tensors", inputs, targets, {}
    if isinstance(source, str | Path):
        path = Path(source)
        if path.is_file() and path.suffix == ".safetensors":
            tensors = load_tensors(path.read_bytes())
            missing = {"inputs", "targets"} - set(tensors)
            if missing:
                raise ConfigError(
                    f"{path} lacks tensor(s) {sorted(missing)}; save the data set as "
                    "safetensors with 'inputs' and 'targets' (first dimension = samples)"
                )
            return kind or "tensors", tensors["inputs"], tensors["targets"], {}
        if path.is_dir() and (path / SPLIT_FILES["train"]).is_file():
            return _load_source(WikiText2.load(path, "train", **text), kind, text)
        if path.is_dir():
            data = Cifar10.load(path, "train")
            return "cifar10", data.images, data.labels, {}
        raise ConfigError(
            f"data source {str(path)!r} is neither a CIFAR-10 binary or Wikitext-2 raw "
            "directory nor a .safetensors file with 'inputs' and 'targets'"
        )
    raise ConfigError(
        f"data source {type(source).__name__} is not supported; pass a CIFAR-10 directory, a "
        ".safetensors file, a Cifar10, or a pair of tensors (inputs, targets)"
    )


def upload_dataset(
    storage: str | Storage,
    name: str,
    source: Any,
    *,
    shard_samples: int = DEFAULT_SHARD_SAMPLES,
    shuffle_seed: int | None = None,
    kind: str | None = None,
    seq_len: int = 128,
    vocab_size: int = 30522,
) -> dict[str, Any]:
    """Put ``source`` into ``storage`` (a URL or an open Storage) as data set ``name``; return
    its data ref (see the module docstring). Re-uploading a name replaces it. ``seq_len`` and
    ``vocab_size`` apply to a Wikitext-2 directory (tokenised as WikiText2.load does)."""
    validate_key(name)
    if "/" in name:
        raise ConfigError(f"data set name {name!r} must be one key part (no '/')")
    if not (isinstance(shard_samples, int) and shard_samples >= 1):
        raise ConfigError(f"shard_samples must be a positive integer, got {shard_samples!r}")
    text = {"seq_len": seq_len, "vocab_size": vocab_size}
    kind, inputs, targets, extra = _load_source(source, kind, text)
    if kind not in KINDS:
        raise ConfigError(f"data set kind {kind!r} must be one of {KINDS}")
    if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
        raise ConfigError(
            f"inputs ({inputs.shape[0]}) and targets ({targets.shape[0]}) must have the same, "
            "non-zero number of samples along dimension 0"
        )
    n = int(inputs.shape[0])
    if shuffle_seed is not None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
        inputs, targets = inputs[order], targets[order]
    prefix = f"datasets/{name}"
    shards = math.ceil(n / shard_samples)
    ref = {
        "format": FORMAT,
        "prefix": prefix,
        "name": name,
        "kind": kind,
        "samples": n,
        "shard_samples": shard_samples,
        "shards": shards,
        **extra,
    }
    store = open_storage(storage) if isinstance(storage, str) else storage
    try:
        store.delete_prefix(prefix + "/")
        for i in range(shards):
            lo, hi = i * shard_samples, min(n, (i + 1) * shard_samples)
            piece = {
                "inputs": inputs[lo:hi].contiguous(),
                "targets": targets[lo:hi].contiguous(),
            }
            store.put(_shard_key(prefix, i), save_tensors(piece))
        # The index last: a data set is usable only once every shard is in place.
        index = {**ref, "inputs": _describe(inputs), "targets": _describe(targets)}
        store.put(f"{prefix}/index.json", json.dumps(index, indent=1).encode())
    finally:
        if isinstance(storage, str):
            store.close()
    return ref


def _describe(t: Tensor) -> dict[str, Any]:
    return {"dtype": str(t.dtype).removeprefix("torch."), "sample_shape": list(t.shape[1:])}


def _check_ref(ref: dict[str, Any]) -> None:
    if not isinstance(ref, dict) or ref.get("format") != FORMAT:
        raise ConfigError(
            f"not a FuncPipe data ref (format {FORMAT!r}): {ref!r}; use the dict "
            "upload_dataset() returns or `funcpipe data upload` prints"
        )


def micro_batch_range(
    ref: dict[str, Any], step: int, micro_batch: int, *, batch_size: int, micro_batches: int
) -> tuple[int, int]:
    """Sample indices [lo, hi) of ``micro_batch`` of step ``step`` in the stored order."""
    _check_ref(ref)
    n = int(ref["samples"])
    if batch_size < 1 or batch_size > n:
        raise ConfigError(f"batch_size={batch_size} must be in [1, {n}] for data set {ref['name']}")
    if not 0 <= micro_batch < micro_batches <= batch_size:
        raise ConfigError(
            f"micro_batch={micro_batch} must be in [0, micro_batches={micro_batches}) and "
            f"micro_batches <= batch_size={batch_size}"
        )
    if step < 0:
        raise ConfigError(f"step={step} must be >= 0")
    start = (step % (n // batch_size)) * batch_size
    # tensor_split: the first batch_size % micro_batches parts get one sample more.
    base, extra = divmod(batch_size, micro_batches)
    lo = start + micro_batch * base + min(micro_batch, extra)
    return lo, lo + base + (1 if micro_batch < extra else 0)


def read_micro_batch(
    storage: Storage,
    dataset_ref: dict[str, Any],
    step: int,
    micro_batch: int,
    *,
    batch_size: int,
    micro_batches: int,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of ``micro_batch`` of step ``step``, read from ``storage`` (the root
    the data set was uploaded to). Reads only the shards holding those samples.

    Wikitext-2 sequences are masked here, per micro-batch, from a generator seeded with
    (``seed``, step, micro-batch), so any function draws the same masks for the same micro-batch.
    """
    lo, hi = micro_batch_range(
        dataset_ref, step, micro_batch, batch_size=batch_size, micro_batches=micro_batches
    )
    per = int(dataset_ref["shard_samples"])
    inputs, targets = [], []
    for shard in range(lo // per, (hi - 1) // per + 1):
        piece = load_tensors(storage.get(_shard_key(dataset_ref["prefix"], shard)))
        a, b = max(lo, shard * per) - shard * per, min(hi, (shard + 1) * per) - shard * per
        inputs.append(piece["inputs"][a:b])
        targets.append(piece["targets"][a:b])
    x, y = torch.cat(inputs), torch.cat(targets)
    if dataset_ref["kind"] == "cifar10":
        x = normalize(x)
    elif dataset_ref["kind"] == "wikitext2":
        x, y = mask_tokens(
            x,
            vocab_size=int(dataset_ref["vocab_size"]),
            generator=_generator(seed, step, micro_batch, 2),
            probability=float(dataset_ref["mask_probability"]),
        )
    return x, y


class StoredBatches:
    """The global batches a run reading ``ref`` from storage trains on, built from the very
    micro-batches the functions read (one epoch, stored order): to check, or to feed the same
    data from the client (``train(batches=...)``)."""

    def __init__(
        self,
        storage: Storage,
        ref: dict[str, Any],
        batch_size: int,
        micro_batches: int = 1,
        seed: int = 0,
    ) -> None:
        micro_batch_range(ref, 0, 0, batch_size=batch_size, micro_batches=micro_batches)
        self.storage, self.ref, self.seed = storage, ref, seed
        self.batch_size, self.micro_batches = batch_size, micro_batches

    def __len__(self) -> int:
        return int(self.ref["samples"]) // self.batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for step in range(len(self)):
            parts = [
                read_micro_batch(
                    self.storage, self.ref, step, b, batch_size=self.batch_size,
                    micro_batches=self.micro_batches, seed=self.seed,
                )
                for b in range(self.micro_batches)
            ]  # fmt: skip
            yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def stored_batches(
    storage: Storage,
    dataset_ref: dict[str, Any],
    batch_size: int,
    micro_batches: int = 1,
    *,
    seed: int = 0,
) -> StoredBatches:
    """See :class:`StoredBatches`."""
    _check_ref(dataset_ref)
    return StoredBatches(storage, dataset_ref, batch_size, micro_batches, seed)
