"""The S3 lifecycle rule in docs/storage.md is valid as written and expires what it says."""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "storage.md"


def _lifecycle_json() -> dict:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(), re.S)
    (block,) = [b for b in blocks if "funcpipe-expire-dead-jobs" in b]
    return json.loads(block)


def test_the_documented_lifecycle_rule_applies_on_an_s3_server(s3_server) -> None:
    import boto3

    rules = json.loads(json.dumps(_lifecycle_json()).replace("PREFIX/", "team-a/"))
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1")
    bucket = "fp-lifecycle-doc"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=rules)
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["ID"] == "funcpipe-expire-dead-jobs" and rule["Status"] == "Enabled"
    assert rule["Filter"]["Prefix"] == "team-a/jobs/"  # job keys only: datasets/ stays
    assert rule["Expiration"]["Days"] == 7
