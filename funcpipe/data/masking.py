"""BERT masked-LM masking, deterministic for a given generator state.

Every sequence gets at least one masked token, so each sequence's mean masked-token loss is
defined and the loss stays additive over samples (see `funcpipe.models.losses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from funcpipe.errors import ConfigError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens; every id from `first_regular` up is an ordinary word piece."""

    pad: int = 0
    unk: int = 1
    cls: int = 2
    sep: int = 3
    mask: int = 4
    first_regular: int = 5

    @property
    def names(self) -> list[str]:
        return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


SPECIAL = SpecialTokens()


def mask_tokens(
    ids: Tensor,
    *,
    vocab_size: int,
    generator: torch.Generator,
    special: SpecialTokens = SPECIAL,
    probability: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """Return `(inputs, labels)` for masked-LM training on int64 `ids` of shape (batch, seq).

    Each ordinary token is chosen with `probability` (at least one per sequence); a chosen
    token becomes [MASK] 80% of the time, a random word piece 10%, itself 10%. Labels hold the
    original id at chosen positions and -100 elsewhere.
    """
    if ids.dim() != 2 or ids.dtype != torch.int64:
        raise ConfigError(f"ids must be int64 of shape (batch, seq), got {ids.dtype} {ids.shape}")
    if not 0.0 < probability < 1.0:
        raise ConfigError(f"probability={probability} must be in (0, 1)")
    if vocab_size <= special.first_regular:
        raise ConfigError(f"vocab_size={vocab_size} leaves no ordinary tokens after the specials")
    candidates = ids >= special.first_regular
    if not bool(candidates.any(dim=1).all()):
        raise ConfigError("a sequence has no ordinary token to mask; drop empty sequences")
    # All random draws happen unconditionally so the stream does not depend on the data.
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & candidates
    fallback = torch.rand(ids.shape, generator=generator).masked_fill(~candidates, -1.0)
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(
        special.first_regular, vocab_size, ids.shape, generator=generator, dtype=torch.int64
    )
    empty_rows = ~chosen.any(dim=1)
    pick = torch.zeros_like(chosen)
    pick[torch.arange(ids.shape[0]), fallback.argmax(dim=1)] = True
    chosen |= pick & empty_rows[:, None]

    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE_INDEX))
    inputs = ids.clone()
    inputs[chosen & (action < 0.8)] = special.mask
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels
