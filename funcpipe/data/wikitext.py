"""Wikitext-2 (raw) for BERT masked-LM: a WordPiece tokenizer and fixed-length sequences.

The raw release (wikitext-2-raw-v1.zip, folder wikitext-2-raw/) holds `wiki.train.raw`,
`wiki.valid.raw` and `wiki.test.raw`: UTF-8 text, one paragraph or heading (" = Title = ")
per line. The tokenizer is a lower-casing WordPiece trained with the `tokenizers` library on
the training split and saved beside the text as `wordpiece-<vocab_size>.json`, so every
function reuses the same vocabulary instead of retraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from torch import Tensor

from funcpipe.data.batches import Batches
from funcpipe.data.masking import SPECIAL, mask_tokens
from funcpipe.data.source import DataSource, as_source, read_file
from funcpipe.errors import ConfigError

SPLIT_FILES = {"train": "wiki.train.raw", "valid": "wiki.valid.raw", "test": "wiki.test.raw"}
FORMAT = (
    "Wikitext-2 raw text: UTF-8, one paragraph per line, ending in a newline (from "
    "wikitext-2-raw-v1.zip, folder wikitext-2-raw/; or write synthetic files with "
    "funcpipe.data.write_synthetic_wikitext2)"
)


def read_text(source: DataSource, split: str) -> str:
    """The text of one split, checked: present, non-empty, valid UTF-8, not cut mid-line."""
    name = SPLIT_FILES.get(split)
    if name is None:
        raise ConfigError(f"split={split!r} must be one of {', '.join(SPLIT_FILES)}")
    data = read_file(source, name, FORMAT)
    where = source.describe(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"Wikitext-2 file {where} is corrupt or truncated: invalid UTF-8 at byte "
            f"{exc.start}; expected {FORMAT}"
        ) from None
    if not text.strip():
        raise ConfigError(f"Wikitext-2 file {where} is empty; expected {FORMAT}")
    if not text.endswith("\n"):
        raise ConfigError(
            f"Wikitext-2 file {where} is truncated: it does not end with a newline; "
            f"expected {FORMAT}"
        )
    return text


def train_wordpiece(text: str, vocab_size: int) -> Tokenizer:
    """Train a BERT-style (lower-casing) WordPiece with the special tokens at ids 0-4."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL.names, show_progress=False
    )
    tokenizer.train_from_iterator(_lines(text), trainer=trainer)
    return tokenizer


def load_tokenizer(source: DataSource, vocab_size: int) -> Tokenizer:
    """The WordPiece saved beside the text; trained on the training split and saved if absent."""
    name = f"wordpiece-{vocab_size}.json"
    if source.exists(name):
        try:
            tokenizer = Tokenizer.from_str(source.read(name).decode("utf-8"))
        except Exception as exc:  # the library raises its own exception types
            raise ConfigError(
                f"tokenizer file {source.describe(name)} is corrupt ({exc}); delete it to "
                "retrain from wiki.train.raw"
            ) from exc
    else:
        tokenizer = train_wordpiece(read_text(source, "train"), vocab_size)
        source.write(name, tokenizer.to_str().encode("utf-8"))
    for token, expected in zip(SPECIAL.names, range(len(SPECIAL.names)), strict=True):
        if tokenizer.token_to_id(token) != expected:
            raise ConfigError(
                f"tokenizer {source.describe(name)} maps {token} to "
                f"{tokenizer.token_to_id(token)}, not {expected}; delete it to retrain"
            )
    return tokenizer


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class WikiText2:
    """A Wikitext-2 split as int64 sequences (N, seq_len): [CLS] word pieces... [SEP]."""

    sequences: Tensor
    vocab_size: int
    tokenizer: Tokenizer

    @classmethod
    def load(
        cls,
        location: str | Path | DataSource,
        split: str = "train",
        *,
        seq_len: int = 128,
        vocab_size: int = 30522,
        storage: Any = None,
    ) -> WikiText2:
        """Tokenise `split` and cut its token stream into sequences of `seq_len` tokens."""
        if seq_len < 3:
            raise ConfigError(f"seq_len={seq_len} must be at least 3 ([CLS], a token, [SEP])")
        source = as_source(location, storage=storage)
        text = read_text(source, split)
        tokenizer = load_tokenizer(source, vocab_size)
        stream = [i for enc in tokenizer.encode_batch(_lines(text)) for i in enc.ids]
        body = seq_len - 2
        count = len(stream) // body
        if count == 0:
            raise ConfigError(
                f"{source.describe(SPLIT_FILES[split])} has {len(stream)} tokens, fewer than one "
                f"sequence of seq_len={seq_len}"
            )
        ids = torch.tensor(stream[: count * body], dtype=torch.int64).view(count, body)
        cls_col = torch.full((count, 1), SPECIAL.cls, dtype=torch.int64)
        sep_col = torch.full((count, 1), SPECIAL.sep, dtype=torch.int64)
        sequences = torch.cat([cls_col, ids, sep_col], dim=1)
        return cls(sequences, tokenizer.get_vocab_size(), tokenizer)

    def __len__(self) -> int:
        return int(self.sequences.shape[0])

    def batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = 1,
        drop_last: bool = True,
        mask_probability: float = 0.15,
    ) -> Batches:
        """Global batches of masked token ids and labels (-100 where not masked)."""

        def take(indices: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            return mask_tokens(
                self.sequences[indices],
                vocab_size=self.vocab_size,
                generator=generator,
                probability=mask_probability,
            )

        return Batches(take, len(self), batch_size, seed, shuffle, epochs, drop_last)
