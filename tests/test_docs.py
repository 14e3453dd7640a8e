"""The docs are tested: every fenced block in README.md and docs/*.md runs as a reader pastes it.

Why: a command or example that no test runs goes stale silently. Rules, per block language:

- ``python``: the block runs as a script in a fresh interpreter (this suite's venv), cwd an empty
  temp dir, with FUNCPIPE_STORAGE_DIR and FUNCPIPE_CACHE pointing at temp dirs.
- ``bash``/``sh``/``shell``: every command runs, in order, in one bash from the repository root
  (``set -e``), with the venv's ``bin`` first on PATH (as after ``source .venv/bin/activate``);
  ``.venv/`` in a command means this suite's venv, and so does ``VENV`` for ``make``.
- ``console``: the same, for the lines that start with ``$ ``; the other lines are output.
- ``text``: output or a layout, never run. ``json``: must parse.
- A block that cannot run here (a cloud account, the whole suite itself) says so in the doc,
  with the marker ``<!-- docs-test: skip (reason) -->`` on the line before the fence; the reason
  shows in the pytest report. ``<!-- docs-test: ci (reason) -->`` marks a block that CI runs:
  each of its commands must be a line of ``.ci/run`` (checked here), and it is reported skipped.
- A fence without a language, an indented code block, or a ``text`` block that starts like a
  command or Python code fails: say what it is.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CI_SCRIPT = ROOT / ".ci" / "run"
TIMEOUT_S = 900  # a generous bound for one block on a shared 2-core machine

RUN = {"python", "bash", "sh", "shell", "console"}
DATA = {"json"}
KNOWN = RUN | DATA | {"text"}

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(skip|ci)\s*\((.+)\)\s*-->\s*$")
_LIST_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s")
# The first line of a ```text block that a reader would paste: a command or Python code.
_LOOKS_RUNNABLE = re.compile(
    r"^(\$ |(funcpipe|python3?|pip3?|make|aws|docker|export|git|cd|curl|sudo|apt-get|apt|brew|"
    r"lithops|tensorboard|redis-server|kubectl|gcloud|az|ibmcloud|bash|sh)(\s|$)|\.venv/|"
    r"(bench|scripts)/\S+\.(py|sh)|import \w|from [\w.]+ import )"
)


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and its marker (if any)."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: list[str]  # the lines between the fences
    marker: tuple[str, str] | None  # ("skip" | "ci", reason)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of a Markdown file, and the problems a reader would trip on."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    rel = path.relative_to(ROOT)
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            if _is_indented_code(lines, i):
                problems.append(
                    f"{rel}:{i + 1}: indented code block; use a fenced block with a language "
                    "(```bash to run it, ```text for output)"
                )
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(
            rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]
        ):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            problems.append(f"{rel}:{start + 1}: fence never closed")
        i += 1
        marker = None
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        if prev >= 0 and (mm := _MARKER.match(lines[prev])):
            marker = (mm.group(1), mm.group(2).strip())
        blocks.append(Block(path, start + 1, lang, body, marker))
    return blocks, problems


def _is_indented_code(lines: list[str], i: int) -> bool:
    """A 4-space-indented paragraph after a blank line, outside a list, is a code block."""
    line = lines[i]
    if not (line.startswith("    ") or line.startswith("\t")) or not line.strip():
        return False
    if i == 0 or lines[i - 1].strip():
        return False
    prev = i - 1
    while prev >= 0 and not lines[prev].strip():
        prev -= 1
    # Inside a list, indented lines continue the item (CommonMark needs more indent for code).
    return not (prev >= 0 and (_LIST_ITEM.match(lines[prev]) or lines[prev].startswith(" ")))


def _collect() -> tuple[list[Block], list[str]]:
    blocks: list[Block] = []
    problems: list[str] = []
    for path in DOCS:
        b, p = parse_blocks(path)
        blocks += b
        problems += p
    return blocks, problems


BLOCKS, PROBLEMS = _collect()


def commands(block: Block) -> list[tuple[int, str]]:
    """(line, command) of each command a reader would type, joining ``\\`` continuations."""
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for k, raw in enumerate(block.body):
        lineno = block.line + 1 + k
        text = raw
        if pending is None:
            if block.lang == "console":
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            pending = (lineno, "")
        pending = (pending[0], pending[1] + text)
        if text.endswith("\\"):
            pending = (pending[0], pending[1][:-1] + " ")
            continue
        out.append(pending)
        pending = None
    if pending is not None:
        out.append(pending)
    return out


def _venv() -> Path:
    return Path(sys.prefix)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    (tmp_path / "storage").mkdir(mode=0o700)
    (tmp_path / "cache").mkdir()
    env["FUNCPIPE_STORAGE_DIR"] = str(tmp_path / "storage")
    env["FUNCPIPE_CACHE"] = str(tmp_path / "cache")
    env["PATH"] = f"{_venv() / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VENV"] = str(_venv())
    env["VIRTUAL_ENV"] = str(_venv())
    env.pop("PYTHONPATH", None)
    return env


def _ci_lines() -> set[str]:
    return {ln.strip() for ln in CI_SCRIPT.read_text().splitlines()}


def test_every_block_says_what_it_is() -> None:
    """Unlabelled fences and indented code blocks cannot be told apart from commands."""
    problems = list(PROBLEMS)
    for b in BLOCKS:
        if b.lang not in KNOWN:
            what = f"language {b.lang!r}" if b.lang else "no language"
            problems.append(
                f"{b.where}: fenced block with {what}; use one of {sorted(KNOWN)} "
                "(```text for output or a layout)"
            )
        first = next((s for s in (ln.strip() for ln in b.body) if s and s[0] != "#"), "")
        if b.lang == "text" and _LOOKS_RUNNABLE.match(first):
            problems.append(
                f"{b.where}: a ```text block that starts with something a reader would run "
                f"({first[:40]!r}); use ```bash/```console/```python, with a "
                "'<!-- docs-test: skip (why) -->' line before it if it cannot run here"
            )
        if b.marker and b.lang not in RUN:
            problems.append(f"{b.where}: a docs-test marker on a block that never runs")
    assert not problems, "\n".join(problems)


def test_docs_have_blocks() -> None:
    """Guard the collector itself: the README's own examples must be found."""
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    assert any(b.lang == "python" for b in readme)
    assert any(b.lang in {"bash", "sh"} for b in readme)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in RUN], ids=lambda b: b.where)
@pytest.mark.timeout(TIMEOUT_S + 60)
def test_block_runs(block: Block, tmp_path: Path) -> None:
    if block.marker and block.marker[0] == "ci":
        missing = [c for _, c in commands(block) if c.split("#")[0].strip() not in _ci_lines()]
        assert not missing, (
            f"{block.where} is marked as run by CI, but {CI_SCRIPT.relative_to(ROOT)} "
            f"does not run: {missing}"
        )
        pytest.skip(f"{block.where}: runs in CI ({CI_SCRIPT.relative_to(ROOT)}): {block.marker[1]}")
    if block.marker:
        pytest.skip(f"{block.where}: {block.marker[1]}")
    env = _env(tmp_path)
    if block.lang == "python":
        work = tmp_path / "work"
        work.mkdir()
        script = work / "block.py"
        script.write_text("\n".join(block.body) + "\n")
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert proc.returncode == 0, (
            f"{block.where}: python block failed (exit {proc.returncode})\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
        return
    cmds = commands(block)
    assert cmds, f"{block.where}: a {block.lang} block without a command; use ```text"
    script_lines = [
        "set -eo pipefail",
        "trap 'echo \"docs-test: command at line $__line failed\" >&2' ERR",
    ]
    for lineno, cmd in cmds:
        cmd = re.sub(r"(?<![\w/.-])\.venv/", f"{_venv()}/", cmd)
        script_lines += [f"__line={lineno}", cmd]
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script_lines)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"{block.where}: command failed (exit {proc.returncode})\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )


def test_json_blocks_parse() -> None:
    """A JSON example a reader copies (a plan file, a policy) must at least be well-formed."""
    problems = []
    for block in (b for b in BLOCKS if b.lang in DATA):
        try:
            json.loads("\n".join(block.body))
        except json.JSONDecodeError as exc:
            problems.append(f"{block.where}: json block does not parse: {exc}")
    assert not problems, "\n".join(problems)


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            out.add(slug)
    return out


def test_relative_links_resolve() -> None:
    """A link to a file or heading that moved leaves a reader stranded."""
    problems = []
    for doc in DOCS:
        in_fence = False
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if _FENCE.match(line):
                in_fence = not in_fence
            if in_fence:
                continue
            for target in _LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue  # http(s), mailto: not checked here
                file, _, anchor = target.partition("#")
                dest = (doc.parent / file).resolve() if file else doc
                where = f"{doc.relative_to(ROOT)}:{n}"
                if not dest.exists():
                    problems.append(f"{where}: link to missing {file}")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    problems.append(f"{where}: no heading #{anchor} in {file or doc.name}")
    assert not problems, "\n".join(problems)
