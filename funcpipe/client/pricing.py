"""What a run would cost on a real cloud, from its measured time, memory sizes and requests.

Every function of a synchronous pipeline is alive for the whole iteration, so compute cost is
iteration time x sum over functions of memory x price per GB-second; storage requests add their
per-request prices. Defaults are AWS Lambda (x86) and S3 Standard list prices, us-east-1.
"""

from __future__ import annotations

from dataclasses import dataclass

from funcpipe.planning.plan import Plan


@dataclass(frozen=True)
class Pricing:
    name: str = "AWS Lambda + S3 (us-east-1)"
    gb_second: float = 0.0000166667  # USD per GB-second of function memory
    invocation: float = 0.20 / 1_000_000  # USD per function invocation
    put_request: float = 0.005 / 1_000  # USD per PUT (S3 Standard)
    get_request: float = 0.0004 / 1_000  # USD per GET (S3 Standard)

    def compute_cost(self, plan: Plan, seconds: float) -> float:
        gb = sum(s.replicas * s.memory_mb / 1024 for s in plan.stages)
        return seconds * gb * self.gb_second

    def request_cost(self, puts: float, gets: float) -> float:
        return puts * self.put_request + gets * self.get_request

    def invocation_cost(self, plan: Plan) -> float:
        return plan.num_functions * self.invocation


AWS_LAMBDA = Pricing()
