"""What a run would cost on a real cloud, from its measured time, memory sizes and requests.

Every function of a synchronous pipeline is alive for the whole iteration, so compute cost is
iteration time x sum over functions of memory x price per GB-second; storage requests add their
per-request prices. The figures come from the platform profiles in
:mod:`funcpipe.planning.platforms` (one source of truth); the default is AWS Lambda (x86) + S3
Standard, us-east-1.
"""

from __future__ import annotations

from dataclasses import dataclass

from funcpipe.planning.plan import Plan
from funcpipe.planning.platforms import AWS_LAMBDA as _AWS_PROFILE
from funcpipe.planning.platforms import Prices

_P = _AWS_PROFILE.prices


@dataclass(frozen=True)
class Pricing:
    """USD prices of one platform; build one from a profile with ``profile.pricing``."""

    name: str = _AWS_PROFILE.description
    gb_second: float = _P.gb_second  # USD per GB-second of function memory
    invocation: float = _P.invocation  # USD per function invocation
    put_request: float = _P.put  # USD per PUT (S3 Standard)
    get_request: float = _P.get  # USD per GET (S3 Standard)
    list_request: float = _P.list  # USD per LIST (S3: PUT/COPY/POST/LIST class)
    delete_request: float = _P.delete  # USD per DELETE (free on S3)
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


AWS_LAMBDA = _AWS_PROFILE.pricing
