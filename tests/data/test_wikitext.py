"""Wikitext-2 raw files, the saved WordPiece, sequences and masked-LM batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from funcpipe.data import SPECIAL, WikiText2, mask_tokens, write_synthetic_wikitext2
from funcpipe.errors import ConfigError
from funcpipe.storage import LocalDirStorage

VOCAB = 300


@pytest.fixture(scope="module")
def wiki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wikitext")
    write_synthetic_wikitext2(root, train_lines=120, seed=2)
    return root


def test_generated_files_are_raw_wikitext(wiki_dir: Path) -> None:
    text = (wiki_dir / "wiki.train.raw").read_text("utf-8")
    lines = text.splitlines()
    assert lines[1].startswith(" = ") and lines[1].endswith(" = ")
    assert any("@-@" in line or "@,@" in line for line in lines)
    assert text.endswith("\n")
    assert {p.name for p in wiki_dir.iterdir()} >= {
        "wiki.train.raw",
        "wiki.valid.raw",
        "wiki.test.raw",
    }


def test_sequences_round_trip_through_the_saved_tokenizer(wiki_dir: Path) -> None:
    data = WikiText2.load(wiki_dir, seq_len=24, vocab_size=VOCAB)
    assert (wiki_dir / f"wordpiece-{VOCAB}.json").is_file()
    assert data.sequences.dtype == torch.int64 and data.sequences.shape[1] == 24
    assert torch.all(data.sequences[:, 0] == SPECIAL.cls) and torch.all(
        data.sequences[:, -1] == SPECIAL.sep
    )
    assert int(data.sequences.max()) < data.vocab_size <= VOCAB
    # The token stream is the training text, lower-cased, in order (spacing aside).
    text = "".join((wiki_dir / "wiki.train.raw").read_text("utf-8").lower().split())
    decoded = "".join(data.tokenizer.decode(data.sequences[:2, 1:-1].flatten().tolist()).split())
    assert len(decoded) > 40 and text.startswith(decoded)
    again = WikiText2.load(wiki_dir, seq_len=24, vocab_size=VOCAB)  # reuses the saved file
    assert torch.equal(again.sequences, data.sequences)
    valid = WikiText2.load(wiki_dir, "valid", seq_len=24, vocab_size=VOCAB)
    assert len(valid) > 0 and valid.vocab_size == data.vocab_size


def test_reads_from_storage(tmp_path: Path) -> None:
    storage = LocalDirStorage(tmp_path)
    write_synthetic_wikitext2("corpora/wt2", train_lines=40, storage=storage)
    data = WikiText2.load("corpora/wt2", seq_len=16, vocab_size=VOCAB, storage=storage)
    assert storage.exists(f"corpora/wt2/wordpiece-{VOCAB}.json")
    assert len(data) > 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-1], "truncated: it does not end with a newline"),
        (lambda b: b + "é".encode()[:1], "invalid UTF-8"),
        (lambda b: b"", "is empty"),
    ],
)
def test_corrupt_text_is_rejected(tmp_path: Path, damage, message: str) -> None:
    write_synthetic_wikitext2(tmp_path, train_lines=20)
    path = tmp_path / "wiki.test.raw"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ConfigError, match=rf"wiki\.test\.raw.*{message}.*Wikitext-2 raw"):
        WikiText2.load(tmp_path, "test", seq_len=16, vocab_size=VOCAB)


def test_missing_file_and_corrupt_tokenizer_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"wiki\.train\.raw is missing; expected Wikitext-2"):
        WikiText2.load(tmp_path)
    write_synthetic_wikitext2(tmp_path, train_lines=20)
    (tmp_path / f"wordpiece-{VOCAB}.json").write_text("{not json")
    with pytest.raises(ConfigError, match=f"wordpiece-{VOCAB}.json is corrupt"):
        WikiText2.load(tmp_path, seq_len=16, vocab_size=VOCAB)


def test_masked_batches_are_deterministic_and_shardable(wiki_dir: Path) -> None:
    data = WikiText2.load(wiki_dir, seq_len=24, vocab_size=VOCAB)
    batches = data.batches(6, seed=4)
    a, b = list(batches), list(data.batches(6, seed=4))
    assert all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )
    shards = [list(batches.shard(r, 3)) for r in range(3)]
    for step, (inputs, labels) in enumerate(a):
        assert torch.equal(torch.cat([s[step][0] for s in shards]), inputs)
        assert torch.equal(torch.cat([s[step][1] for s in shards]), labels)
        assert bool(((labels != -100).sum(dim=1) >= 1).all())


def test_masking_rules() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(SPECIAL.first_regular, 1000, (400, 32))
    ids[:, 0], ids[:, -1] = SPECIAL.cls, SPECIAL.sep
    inputs, labels = mask_tokens(ids, vocab_size=1000, generator=g)
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # unchosen tokens untouched
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # specials never masked
    share = chosen.float().mean().item()
    assert 0.13 < share < 0.17
    as_mask = (inputs[chosen] == SPECIAL.mask).float().mean().item()
    assert 0.75 < as_mask < 0.85
    short = torch.tensor([[SPECIAL.cls, 7, SPECIAL.sep]] * 50)
    _, labels = mask_tokens(short, vocab_size=10, generator=g)
    assert torch.all(labels[:, 1] == 7)  # the one ordinary token is always chosen
    with pytest.raises(ConfigError, match="no ordinary token"):
        mask_tokens(torch.tensor([[SPECIAL.cls, SPECIAL.sep]]), vocab_size=10, generator=g)
