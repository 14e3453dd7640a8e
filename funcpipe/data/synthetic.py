"""Small synthetic data sets written in exactly the real files' formats.

Nothing can be downloaded at run time, so tests and demos write these and read them back with
the real loaders. The data carry a learnable signal (class-dependent colours, a small
vocabulary with repeated phrases) so a demo's loss visibly falls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from funcpipe.data import cifar10, wikitext
from funcpipe.data.source import DataSource, as_source

_WORDS = (
    "a",
    "after",
    "album",
    "also",
    "an",
    "and",
    "are",
    "area",
    "army",
    "as",
    "at",
    "band",
    "be",
    "bridge",
    "built",
    "by",
    "called",
    "chart",
    "church",
    "city",
    "court",
    "during",
    "early",
    "film",
    "first",
    "for",
    "found",
    "from",
    "game",
    "had",
    "he",
    "his",
    "hurricane",
    "in",
    "is",
    "it",
    "its",
    "known",
    "later",
    "made",
    "music",
    "new",
    "north",
    "of",
    "on",
    "one",
    "people",
    "played",
    "record",
    "released",
    "river",
    "road",
    "season",
    "second",
    "series",
    "single",
    "song",
    "south",
    "state",
    "station",
    "storm",
    "team",
    "that",
    "the",
    "their",
    "they",
    "this",
    "three",
    "time",
    "to",
    "tour",
    "two",
    "used",
    "war",
    "was",
    "were",
    "which",
    "with",
    "world",
    "year",
    "years",
)


def write_synthetic_cifar10(
    location: str | Path | DataSource,
    *,
    per_file: int = 100,
    seed: int = 0,
    storage: Any = None,
) -> DataSource:
    """Write data_batch_1..5.bin and test_batch.bin with `per_file` images each."""
    source = as_source(location, storage=storage)
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 216, size=(len(cifar10.CLASSES), 3, 1, 1))
    for name in (*cifar10.TRAIN_FILES, *cifar10.TEST_FILES):
        labels = rng.integers(0, len(cifar10.CLASSES), size=per_file)
        noise = rng.integers(-40, 41, size=(per_file, 3, 32, 32))
        images = np.clip(palette[labels] + noise, 0, 255).astype(np.uint8)
        source.write(name, cifar10.encode_batch(images, labels))
    source.write("batches.meta.txt", ("\n".join(cifar10.CLASSES) + "\n").encode())
    return source


def write_synthetic_wikitext2(
    location: str | Path | DataSource,
    *,
    train_lines: int = 400,
    seed: int = 0,
    storage: Any = None,
) -> DataSource:
    """Write wiki.{train,valid,test}.raw in the raw Wikitext-2 layout (headings, paragraphs)."""
    source = as_source(location, storage=storage)
    rng = np.random.default_rng(seed)
    sizes = {
        "train": train_lines,
        "valid": max(train_lines // 8, 8),
        "test": max(train_lines // 8, 8),
    }
    for split, lines in sizes.items():
        out = []
        for i in range(lines):
            if i % 10 == 0:
                title = " ".join(rng.choice(_WORDS, size=2)).title()
                out += [" ", f" = {title} = ", " "]
            words = list(rng.choice(_WORDS, size=int(rng.integers(8, 40))))
            for j in range(3, len(words), 9):  # Wikitext's tokenised punctuation and <unk>
                words[j] = str(rng.choice([",", "@-@", "<unk>", "(", ")", "1 @,@ 000"]))
            out.append(" " + " ".join(words) + " . ")
        text = "\n".join(out) + "\n"
        source.write(wikitext.SPLIT_FILES[split], text.encode("utf-8"))
    return source
