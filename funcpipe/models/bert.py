"""BERT with a masked-LM head: embeddings, one transformer block per layer, the head.

Between layers the value is `(hidden, keep)`: `hidden` is (batch, seq, width) and `keep` is a
float (batch, seq) mask, 1 for real tokens and 0 for padding, computed once from the token ids
by the embedding layer and carried to every block across cuts.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from funcpipe.errors import ConfigError

Hidden = tuple[Tensor, Tensor]


class Embeddings(nn.Module):
    """Token + position + segment embeddings, LayerNorm; also builds the padding mask."""

    def __init__(
        self, vocab_size: int, hidden: int, max_positions: int, pad_id: int, dropout: float
    ) -> None:
        super().__init__()
        self.word = nn.Embedding(vocab_size, hidden)
        self.position = nn.Embedding(max_positions, hidden)
        self.segment = nn.Embedding(2, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.pad_id = pad_id

    def forward(self, ids: Tensor) -> Hidden:
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ConfigError(
                f"BERT input must be int64 token ids of shape (batch, seq), got "
                f"{ids.dtype} {tuple(ids.shape)}"
            )
        if ids.shape[1] > self.position.num_embeddings:
            raise ConfigError(
                f"sequence length {ids.shape[1]} exceeds max_positions="
                f"{self.position.num_embeddings}; build the model with a larger max_positions"
            )
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word(ids) + self.position(positions) + self.segment(torch.zeros_like(ids))
        keep = (ids != self.pad_id).to(x.dtype)
        return self.dropout(self.norm(x)), keep


class Block(nn.Module):
    """Post-LayerNorm transformer encoder block (self-attention, GELU feed-forward)."""

    def __init__(self, hidden: int, heads: int, intermediate: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"hidden={hidden} must be a multiple of heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=1e-12)
        self.ff_in = nn.Linear(hidden, intermediate)
        self.ff_out = nn.Linear(intermediate, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def attention(self, x: Tensor, keep: Tensor) -> Tensor:
        b, s, h = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads)
        scores = scores.masked_fill(keep[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
        weights = self.dropout(scores.softmax(dim=-1))
        return self.proj((weights @ v).transpose(1, 2).reshape(b, s, h))

    def forward(self, state: Hidden) -> Hidden:
        x, keep = state
        x = self.norm1(x + self.dropout(self.attention(x, keep)))
        ff = self.ff_out(nn.functional.gelu(self.ff_in(x)))
        return self.norm2(x + self.dropout(ff)), keep


class MaskedLMHead(nn.Module):
    """Dense + GELU + LayerNorm, then logits over the vocabulary for every position."""

    def __init__(self, hidden: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, state: Hidden) -> Tensor:
        x, _ = state
        return self.decoder(self.norm(nn.functional.gelu(self.dense(x))))


def bert(
    *,
    layers: int = 24,
    hidden: int = 1024,
    heads: int = 16,
    intermediate: int | None = None,
    vocab_size: int = 30522,
    max_positions: int = 512,
    pad_id: int = 0,
    dropout: float = 0.1,
    tie_weights: bool = True,
) -> nn.Sequential:
    """Build BERT for masked-LM as `embeddings, block1..blockN, mlm_head` (BERT-Large by default).

    `tie_weights` shares the word-embedding matrix with the head's decoder, as BERT does. A tied
    pair spans the first and the last layer, so a plan that puts them in different stages needs
    the runtime to keep both copies in sync; build with `tie_weights=False` for such plans.
    """
    if layers < 1 or hidden < 1 or heads < 1 or vocab_size < 2:
        raise ConfigError(
            f"layers={layers}, hidden={hidden}, heads={heads} must be positive and "
            f"vocab_size={vocab_size} at least 2"
        )
    if not 0 <= pad_id < vocab_size:
        raise ConfigError(f"pad_id={pad_id} must be a token id below vocab_size={vocab_size}")
    inter = 4 * hidden if intermediate is None else intermediate
    embeddings = Embeddings(vocab_size, hidden, max_positions, pad_id, dropout)
    parts: OrderedDict[str, nn.Module] = OrderedDict(embeddings=embeddings)
    for i in range(layers):
        parts[f"block{i + 1}"] = Block(hidden, heads, inter, dropout)
    head = MaskedLMHead(hidden, vocab_size)
    if tie_weights:
        head.decoder.weight = embeddings.word.weight
    parts["mlm_head"] = head
    return nn.Sequential(parts)
