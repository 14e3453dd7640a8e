"""Data sets of the paper (CIFAR-10, Wikitext-2) in their real file formats.

Loaders read from a local directory or a storage key prefix, yield deterministic global
`(inputs, targets)` batches, and shard them per data-parallel replica.
"""

from funcpipe.data.batches import Batches
from funcpipe.data.cifar10 import Cifar10
from funcpipe.data.masking import IGNORE_INDEX, SPECIAL, SpecialTokens, mask_tokens
from funcpipe.data.source import DataSource, LocalDir, StorageDir, as_source
from funcpipe.data.stored import read_micro_batch, stored_batches, upload_dataset
from funcpipe.data.synthetic import write_synthetic_cifar10, write_synthetic_wikitext2
from funcpipe.data.wikitext import WikiText2, load_tokenizer, train_wordpiece

__all__ = [
    "IGNORE_INDEX",
    "SPECIAL",
    "Batches",
    "Cifar10",
    "DataSource",
    "LocalDir",
    "SpecialTokens",
    "StorageDir",
    "WikiText2",
    "as_source",
    "load_tokenizer",
    "mask_tokens",
    "read_micro_batch",
    "stored_batches",
    "train_wordpiece",
    "upload_dataset",
    "write_synthetic_cifar10",
    "write_synthetic_wikitext2",
]
