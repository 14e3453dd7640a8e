"""Loss functions of the zoo's tasks, all additive over samples.

The runtime averages micro-batch losses weighted by their number of samples, which equals the
full-batch loss only if the loss is a mean over samples. Plain cross-entropy with
`ignore_index` averages over masked *tokens* instead, whose count differs between
micro-batches; the masked-LM loss below therefore averages each sequence's mean masked-token
loss over sequences.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from funcpipe.data.masking import IGNORE_INDEX
from funcpipe.errors import ConfigError


def classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over samples."""
    return F.cross_entropy(logits, targets)


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean over sequences of each sequence's mean cross-entropy on its masked tokens.

    `labels` is (batch, seq) with -100 at unmasked positions; every sequence needs at least one
    masked token (`funcpipe.data.masking.mask_tokens` guarantees it).
    """
    masked = labels != IGNORE_INDEX
    count = masked.sum(dim=1)
    if bool((count == 0).any()):
        raise ConfigError(
            "masked_lm_loss needs at least one masked token per sequence; "
            "mask with funcpipe.data.mask_tokens"
        )
    token_loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(labels.shape)
    per_sequence = (token_loss * masked).sum(dim=1) / count.to(token_loss.dtype)
    return per_sequence.mean()


__all__ = ["classification_loss", "masked_lm_loss"]
