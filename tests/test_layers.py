"""The package keeps its layers: the import-linter contracts in pyproject.toml hold, and can fail.

The contracts count every import that can run, at module level and inside functions (imports
for type hints only, under TYPE_CHECKING, never run and are left out). The seeded tests lint a
copy of the package with one bad import added, so they show that the check names an upward
import and a cycle rather than passing whatever the code does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LINT = (
    "import sys\n"
    "from importlinter.cli import lint_imports\n"
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))\n"
)


def _lint(project: Path) -> subprocess.CompletedProcess[str]:
    """Run the contracts of ``project``'s pyproject.toml over its own copy of the package."""
    env = {**os.environ, "PYTHONPATH": str(project)}
    return subprocess.run(
        [sys.executable, "-c", _LINT, str(project / "pyproject.toml")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_package_keeps_its_layers_and_has_no_cycles() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_package_has_a_layer() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    named = {m.strip("() ") for layer in layers for m in layer.replace(":", "|").split("|")}
    package = ROOT / "funcpipe"
    children = {
        f"funcpipe.{p.stem}"
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert children <= named, f"give these a layer in pyproject.toml: {sorted(children - named)}"


def _seeded_copy(tmp_path: Path, seeds: dict[str, str]) -> Path:
    """A copy of the package and its contracts, with ``seeds`` (module path -> code) appended."""
    shutil.copytree(
        ROOT / "funcpipe", tmp_path / "funcpipe", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for path, code in seeds.items():
        with open(tmp_path / path, "a") as f:
            f.write("\n\n" + code)
    return tmp_path


def test_a_seeded_upward_import_and_cycle_break_the_contracts(tmp_path: Path) -> None:
    project = _seeded_copy(
        tmp_path,
        {
            # a function-level import from the bottom layer up to the client
            "funcpipe/errors.py": "def _seeded() -> None:\n    from funcpipe.client import train\n",
            # a cycle inside one layer: the search space never imports the optimiser
            "funcpipe/planning/space.py": "def _seeded() -> None:\n"
            "    from funcpipe.planning import optimize\n",
        },
    )
    run = _lint(project)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "funcpipe.errors is not allowed to import funcpipe.client" in out, out
    assert "funcpipe.errors -> funcpipe.client.train" in out, out
    assert "No cycles are allowed in funcpipe.planning." in out, out
    assert ".space -> .optimize (1 import)" in out, out
