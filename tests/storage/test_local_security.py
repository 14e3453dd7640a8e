"""The local storage root is the user's own, never follows links, and keeps files private."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from torch import nn

from funcpipe import Plan, Stage, train
from funcpipe.errors import ConfigError, KeyNotFound, StorageError
from funcpipe.storage.local_dir import LocalDirStorage


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_files_are_0600_and_folders_0700_whatever_the_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        store = LocalDirStorage(tmp_path / "root")
        store.put("jobs/j/step0/act/s0/mb0", b"weights")
    finally:
        os.umask(old)
    root = tmp_path / "root"
    assert _mode(root) == 0o700
    for folder in ["jobs", "jobs/j", "jobs/j/step0", "jobs/j/step0/act/s0"]:
        assert _mode(root / folder) == 0o700, folder
    assert _mode(root / "jobs/j/step0/act/s0/mb0#") == 0o600


def test_a_root_of_another_user_is_refused(tmp_path, monkeypatch) -> None:
    owner = os.lstat(tmp_path).st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(ConfigError, match=rf"belongs to uid {owner}, not to you"):
        LocalDirStorage(tmp_path)


def test_a_world_writable_root_is_refused(tmp_path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(ConfigError, match="world-writable .*chmod 700"):
        LocalDirStorage(root)
    root.chmod(0o755)  # readable by others is the user's choice; writable is not
    LocalDirStorage(root)


def test_a_root_that_is_a_link_is_refused(tmp_path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="is a symbolic link"):
        LocalDirStorage(tmp_path / "link")


@pytest.fixture()
def planted(tmp_path):
    """A root whose `jobs` folder is a link to a victim folder holding a file."""
    victim = tmp_path / "victim"
    (victim / "j").mkdir(parents=True)
    (victim / "j" / "precious#").write_bytes(b"keep me")
    root = tmp_path / "root"
    store = LocalDirStorage(root)
    (root / "jobs").symlink_to(victim)
    return store, victim


def test_a_planted_jobs_link_redirects_nothing(planted) -> None:
    store, victim = planted
    with pytest.raises(StorageError, match="symbolic link or not a folder"):
        store.put("jobs/j/new", b"x")
    with pytest.raises(StorageError, match="symbolic link or not a folder"):
        store.get("jobs/j/precious")
    with pytest.raises(StorageError, match="symbolic link or not a folder"):
        store.delete_prefix("jobs/")
    with pytest.raises(StorageError, match="symbolic link or not a folder"):
        store.delete("jobs/j/precious")
    assert store.list("") == []  # the link is not descended into
    assert store.delete_prefix("") == 0
    assert sorted(p.name for p in (victim / "j").iterdir()) == ["precious#"]
    assert (victim / "j" / "precious#").read_bytes() == b"keep me"
    assert (store.root / "jobs").is_symlink()  # delete_prefix("") does not remove the link


def test_a_planted_object_link_is_never_read_or_followed(tmp_path) -> None:
    store = LocalDirStorage(tmp_path / "root")
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    store.put("jobs/j/other", b"x")  # makes the folder
    (store.root / "jobs/j/key#").symlink_to(secret)
    with pytest.raises(StorageError, match="is a symbolic link"):
        store.get("jobs/j/key")
    assert not store.exists("jobs/j/key")
    assert store.list("jobs/j/") == ["jobs/j/other"]
    store.put("jobs/j/key", b"new")  # replaces the link itself
    assert store.get("jobs/j/key") == b"new" and secret.read_bytes() == b"secret"
    (store.root / "jobs/j/key#").unlink()
    (store.root / "jobs/j/key#").symlink_to(secret)
    store.delete("jobs/j/key")
    assert secret.read_bytes() == b"secret"
    with pytest.raises(KeyNotFound):
        store.get("jobs/j/key")


def test_training_on_a_root_with_a_planted_link_fails_and_touches_nothing(planted) -> None:
    store, victim = planted
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(StorageError, match="symbolic link"):
        train(model, nn.MSELoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
              batches=[(torch.randn(4, 4), torch.randn(4, 2))],
              plan=Plan(stages=[Stage(start=0, end=2)]), storage=f"local://{store.root}",
              progress=False, job_id="j")  # fmt: skip
    assert sorted(p.name for p in (victim / "j").iterdir()) == ["precious#"]
