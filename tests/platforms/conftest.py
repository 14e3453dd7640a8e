"""The platform tests check the emulation itself: fresh interpreters, unless a test asks for the
fork server (the rest of the suite forks its jobs' functions, see tests/conftest.py)."""

from __future__ import annotations

import pytest

from funcpipe.platforms.local import START_ENV


@pytest.fixture(autouse=True)
def _fresh_interpreters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(START_ENV, "fresh")
