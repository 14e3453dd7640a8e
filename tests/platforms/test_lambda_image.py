"""The Lambda container image definition, checked statically.

Docker cannot run on this machine (nor in CI), so the image is never built here: these tests
check what the Dockerfile says against the repository (base image, CPU torch inside pyproject's
range, the files it copies, the handler it names) instead.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import tomllib
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "aws-lambda" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_base_is_the_aws_lambda_python_image_of_a_supported_python() -> None:
    froms = [arg for word, arg in _instructions() if word == "FROM"]
    assert len(froms) == 1
    match = re.fullmatch(r"public\.ecr\.aws/lambda/python:(3\.\d+)", froms[0])
    assert match, froms[0]
    required = SpecifierSet(_pyproject()["project"]["requires-python"])
    assert match.group(1) in required


def test_torch_is_the_cpu_build_inside_the_projects_range() -> None:
    instr = _instructions()
    version = next(arg for word, arg in instr if word == "ARG" and arg.startswith("TORCH_VERSION"))
    version = version.split("=", 1)[1]
    torch_range = next(
        d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch")
    ).removeprefix("torch")
    assert version in SpecifierSet(torch_range)
    runs = [arg for word, arg in instr if word == "RUN"]
    torch_run = next(r for r in runs if '"torch==${TORCH_VERSION}"' in r)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run


def test_copies_exist_and_funcpipe_installs_with_its_s3_client() -> None:
    instr = _instructions()
    for word, arg in instr:
        if word == "COPY":
            *sources, _dest = arg.split()
            for src in sources:
                assert (ROOT / src).exists(), src
    installs = [arg for word, arg in instr if word == "RUN" and "funcpipe-src[s3]" in arg]
    assert installs, "funcpipe must be installed with its s3 extra (boto3)"
    assert "s3" in _pyproject()["project"]["optional-dependencies"]
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**") :][:4] == [
        "**",
        "!pyproject.toml",
        "!README.md",
        "!funcpipe/**",
    ]


def test_cmd_names_the_handler() -> None:
    cmds = [arg for word, arg in _instructions() if word == "CMD"]
    assert cmds == ['["funcpipe.platforms.lambda_handler.handler"]']
    module, _, name = cmds[0][2:-2].rpartition(".")
    handler = getattr(importlib.import_module(module), name)
    assert list(inspect.signature(handler).parameters) == ["event", "context"]
