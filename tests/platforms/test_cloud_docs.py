"""docs/cloud.md agrees with the code (tests/test_docs.py runs its blocks).

The policy it shows must be what ``funcpipe deploy --policy-only`` prints for that bucket, and
every block it does not run must say what it needs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from funcpipe.platforms.aws_lambda import iam_policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "cloud.md"


def test_documented_policy_is_the_one_deploy_prints() -> None:
    (block,) = re.findall(r"^```json\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert json.loads(block) == iam_policy("my-funcpipe-bucket", "funcpipe", "funcpipe")


def test_skipped_blocks_say_what_they_need() -> None:
    reasons = re.findall(r"<!-- docs-test: skip \((.+?)\) -->", DOC.read_text())
    assert len(reasons) >= 8
    assert all(reason.startswith("needs ") for reason in reasons), reasons
