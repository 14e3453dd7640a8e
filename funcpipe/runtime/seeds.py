"""Random state of the functions: a pure function of the job seed and the work item."""

from __future__ import annotations

import hashlib


def forward_seed(seed: int, step: int, stage: int, micro_batch: int) -> int:
    """The RNG seed of one micro-batch's forward in one stage.

    It depends on the job seed and (step, stage, micro-batch) only, never on the replica that
    runs it, so dropout masks differ between micro-batches, runs repeat exactly, and results do
    not depend on how many replicas a stage has.
    """
    digest = hashlib.blake2b(f"{seed}/{step}/{stage}/{micro_batch}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)
