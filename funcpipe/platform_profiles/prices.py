"""What a run would cost on a real cloud, from its measured time, memory sizes and requests.

Every function of a synchronous pipeline is alive for the whole iteration, so compute cost is
iteration time x sum over functions of memory x price per GB-second; storage requests add their
per-request prices. The defaults are AWS Lambda (x86) + S3 Standard, us-east-1. Sources:
https://aws.amazon.com/lambda/pricing/ (compute $0.0000166667 per GB-s, requests $0.20 per 1M)
and https://aws.amazon.com/s3/pricing/ (PUT, COPY, POST, LIST $0.005 per 1,000; GET $0.0004 per
1,000; DELETE free, DeleteObjects is a POST, i.e. PUT class). Read 2022; checked 2026-11.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a plan is only read here; importing it would load pydantic
    from funcpipe.plan import Plan

__all__ = ["LAMBDA_DESCRIPTION", "LAMBDA_PRICES", "Prices", "Pricing"]


@dataclass(frozen=True)
class Prices:
    """USD per unit: GB-second of function memory, invocation, storage request by class."""

    gb_second: float
    invocation: float
    put: float
    get: float
    list: float
    delete: float


LAMBDA_DESCRIPTION = "AWS Lambda + S3 (us-east-1)"
LAMBDA_PRICES = Prices(
    gb_second=0.0000166667,
    invocation=0.20 / 1_000_000,
    put=0.005 / 1000,
    get=0.0004 / 1000,
    list=0.005 / 1000,
    delete=0.0,
)


@dataclass(frozen=True)
class Pricing:
    """USD prices of one platform; build one from a profile with ``profile.pricing``."""

    name: str = LAMBDA_DESCRIPTION
    gb_second: float = LAMBDA_PRICES.gb_second  # USD per GB-second of function memory
    invocation: float = LAMBDA_PRICES.invocation  # USD per function invocation
    put_request: float = LAMBDA_PRICES.put  # USD per PUT (S3 Standard)
    get_request: float = LAMBDA_PRICES.get  # USD per GET (S3 Standard)
    list_request: float = LAMBDA_PRICES.list  # USD per LIST (S3: PUT/COPY/POST/LIST class)
    delete_request: float = LAMBDA_PRICES.delete  # USD per DELETE (free on S3)
    billing_granularity_s: float = 0.001  # Lambda rounds each invocation's duration up to 1 ms

    @classmethod
    def from_prices(cls, name: str, prices: Prices) -> Pricing:
        return cls(
            name=name,
            gb_second=prices.gb_second,
            invocation=prices.invocation,
            put_request=prices.put,
            get_request=prices.get,
            list_request=prices.list,
            delete_request=prices.delete,
        )

    def compute_cost(self, plan: Plan, seconds: float) -> float:
        gb = sum(s.replicas * s.memory_mb / 1024 for s in plan.stages)
        return seconds * gb * self.gb_second

    def request_cost(self, puts: float, gets: float, lists: float = 0, deletes: float = 0) -> float:
        return (
            puts * self.put_request
            + gets * self.get_request
            + lists * self.list_request
            + deletes * self.delete_request
        )

    def invocation_cost(self, plan: Plan) -> float:
        return plan.num_functions * self.invocation
