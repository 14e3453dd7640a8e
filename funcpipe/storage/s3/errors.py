"""What S3's answers mean to FuncPipe: which failures are retried, and what the others become.

Throttling, 5xx and broken connections are Transient (funcpipe.storage.retry tries again within
the request's deadline); a missing key is KeyNotFound, a missing bucket or missing credentials a
ConfigError that says how to fix it, anything else a StorageError naming the request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error

from funcpipe.errors import ConfigError, StorageError
from funcpipe.storage.retry import Transient

__all__ = [
    "DENIED",
    "MISSING_KEY",
    "NETWORK_ERRORS",
    "RETRYABLE_CODES",
    "BucketMissing",
    "Changed",
    "code_of",
    "failure",
    "no_bucket_error",
    "no_credentials_error",
    "not_found",
    "one_attempt",
]

MISSING_KEY = {"NoSuchKey", "404", "NotFound"}
#: Without s3:ListBucket, S3 answers a GET or HEAD of a missing key with 403, not 404.
DENIED = {"AccessDenied", "403", "Forbidden"}
#: Error codes S3 documents as worth retrying (besides any HTTP 5xx).
RETRYABLE_CODES = {
    "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
    "ThrottlingException", "RequestTimeTooSkewed", "OperationAborted",
    "ConditionalRequestConflict",  # 409: another conditional write of the key is in flight
}  # fmt: skip
#: Failures of the connection itself (refused, reset, timed out, closed mid-body).
NETWORK_ERRORS = (BotoConnectionError, HTTPClientError, Urllib3Error, OSError)


class BucketMissing(ConfigError):
    """The storage URL names a bucket that does not exist."""


class Changed(StorageError):
    """The object was rewritten between two ranged GETs of one read."""


def code_of(exc: ClientError) -> str:
    """S3's error code ('NoSuchKey', 'SlowDown', '403', ...), '' if it sent none."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def one_attempt(
    send: Callable[[], Any],
    then: Callable[[Any], Any] | None = None,
    exists: Callable[[], Exception] | None = None,
) -> Any:
    """One try of a request: ``send()``, then ``then(response)`` (e.g. reading the body, so a
    connection that breaks mid-body is retried too).

    Failures worth retrying become Transient. ``exists``: the request is a conditional write,
    and S3 refusing it (PreconditionFailed: the key exists) raises ``exists()``.
    """
    try:
        resp = send()
        return then(resp) if then is not None else resp
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in RETRYABLE_CODES or status >= 500:
            raise Transient(f"{code or status}: {err.get('Message', exc)}") from exc
        if exists is not None and code == "PreconditionFailed":
            raise exists() from None
        raise
    except NoCredentialsError:
        raise
    except NETWORK_ERRORS as exc:
        raise Transient(f"{type(exc).__name__}: {exc}") from exc


def not_found(key: str, description: str, saw_denied: bool) -> str:
    """The message of a missing key; once S3 answered 403, it says a denial looks the same."""
    message = f"storage key {key!r} not found on {description}"
    if saw_denied:
        message += (
            " (S3 answers 403 AccessDenied for a missing key when the role lacks "
            "s3:ListBucket, and also when it lacks s3:GetObject: check the role's policy if "
            "the key should be there; docs/storage.md lists the actions)"
        )
    return message


def no_bucket_error(bucket: str, endpoint_url: str | None, description: str) -> BucketMissing:
    endpoint = f" --endpoint-url {endpoint_url}" if endpoint_url else ""
    return BucketMissing(
        f"S3 bucket {bucket!r} does not exist on {description}; create it "
        f"(e.g. 'aws s3 mb s3://{bucket}{endpoint}') or, for tests and local servers, "
        "add create_bucket=true to the storage URL"
    )


def no_credentials_error(where: str) -> ConfigError:
    return ConfigError(
        f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a config file, or run with an instance role "
        "(credentials never go in the storage URL)"
    )


def failure(what: str, key: str, description: str, exc: Exception) -> StorageError:
    """Any other failure of a request, named."""
    return StorageError(f"S3 {what} of {key!r} on {description} failed: {exc}")
