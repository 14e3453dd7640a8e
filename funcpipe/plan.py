"""A plan says how a model is cut into stages and how each stage is deployed.

A stage is the contiguous layer range ``[start, end)`` of an ``nn.Sequential``, run by ``replicas``
functions (data parallelism) of ``memory_mb`` each. Plans are validated up front so a bad plan fails
on the client with a message naming the field, never inside a function half-way through a step.

A plan is pure data, below every other layer, so the runtime, the planner and the client all read
the same one. Which memory sizes a platform offers is the platform's data, not the plan's: a stage
here only needs a positive size, and
:meth:`PlatformLimits.check_plan <funcpipe.platform_profiles.PlatformLimits.check_plan>` says
whether a platform can run it (AWS Lambda stops at 10,240 MB, Alibaba FC goes to 32 GB).
"""

from __future__ import annotations

import difflib
import json
import numbers
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    field_validator,
    model_validator,
)

from funcpipe.errors import ConfigError

__all__ = ["Plan", "Stage", "StrictCount"]


def _whole_number(value: Any) -> int:
    """Accept integers only: pydantic's lax mode would turn True into 1 and "2" into 2, which
    hides a typo (or a flag passed for a count) until it runs the wrong plan."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"must be an integer, got {type(value).__name__} {value!r}; write it as a number "
            "without quotes, e.g. 2"
        )
    return int(value)


StrictCount = Annotated[int, BeforeValidator(_whole_number)]


class Stage(BaseModel):
    """Layers ``[start, end)`` on ``replicas`` functions of ``memory_mb`` MB each."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: StrictCount
    end: StrictCount
    replicas: StrictCount = 1
    memory_mb: StrictCount = 3008

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, "Stage")) from None

    @field_validator("start")
    @classmethod
    def _start_non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0 (got {v}); layer indices start at 0")
        return v

    @field_validator("replicas")
    @classmethod
    def _replicas_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v}); every stage needs at least one function")
        return v

    @field_validator("memory_mb")
    @classmethod
    def _memory_positive(cls, v: int) -> int:
        # The range and step are the platform's (PlatformLimits.check_plan), not the plan's.
        if v < 1:
            raise ValueError(f"must be a positive number of MB (got {v}), e.g. 3008")
        return v

    @model_validator(mode="after")
    def _non_empty(self) -> Stage:
        if self.end <= self.start:
            raise ValueError(
                f"end ({self.end}) must be greater than start ({self.start}): "
                "a stage holds at least one layer"
            )
        return self

    @property
    def num_layers(self) -> int:
        return self.end - self.start


class Plan(BaseModel):
    """Stages in pipeline order plus the number of micro-batches each global batch is split into."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stages: tuple[Stage, ...]
    micro_batches: StrictCount = 1
    #: The order each function works in: a name in funcpipe.schedule.SCHEDULES.
    schedule: str = "gpipe"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, "Plan")) from None

    @field_validator("micro_batches")
    @classmethod
    def _micro_batches_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1 (got {v})")
        return v

    @model_validator(mode="after")
    def _contiguous(self) -> Plan:
        if not self.stages:
            raise ValueError("stages is empty: give at least one Stage")
        if self.stages[0].start != 0:
            raise ValueError(
                f"stages[0].start is {self.stages[0].start}: the first stage must start at layer 0"
            )
        for i in range(1, len(self.stages)):
            prev, cur = self.stages[i - 1], self.stages[i]
            if cur.start != prev.end:
                kind = "gap" if cur.start > prev.end else "overlap"
                raise ValueError(
                    f"{kind} between stages[{i - 1}] (ends at {prev.end}) and stages[{i}] "
                    f"(starts at {cur.start}): set stages[{i}].start = {prev.end}"
                )
        for i, stage in enumerate(self.stages):
            if stage.replicas > self.micro_batches:
                raise ValueError(
                    f"stages[{i}].replicas is {stage.replicas} but micro_batches is "
                    f"{self.micro_batches}: replica r runs the micro-batches b with "
                    "b mod replicas == r, "
                    f"so some replicas would idle; use replicas <= {self.micro_batches} or raise "
                    "micro_batches"
                )
        return self

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def num_layers(self) -> int:
        return self.stages[-1].end

    @property
    def num_functions(self) -> int:
        return sum(s.replicas for s in self.stages)

    def replica_of(self, stage: int, micro_batch: int) -> int:
        """Replica of ``stage`` that runs ``micro_batch`` (round robin, as in the paper)."""
        return micro_batch % self.stages[stage].replicas

    def micro_batches_of(self, stage: int, replica: int) -> list[int]:
        """Micro-batches handled by one function, ascending."""
        d = self.stages[stage].replicas
        return [b for b in range(self.micro_batches) if b % d == replica]

    def check_model(self, num_layers: int) -> None:
        """Raise ConfigError unless the stages cover exactly ``num_layers`` layers."""
        if self.num_layers != num_layers:
            raise ConfigError(
                f"plan covers layers [0, {self.num_layers}) but the model has {num_layers} layers: "
                f"set stages[-1].end = {num_layers}"
            )

    def check_batch(self, batch_size: int) -> None:
        """Raise ConfigError if a global batch cannot feed every micro-batch."""
        if batch_size < self.micro_batches:
            raise ConfigError(
                f"micro_batches is {self.micro_batches} but a batch has only {batch_size} samples: "
                f"every micro-batch needs at least one sample; use micro_batches <= {batch_size}"
            )

    @classmethod
    def even(
        cls,
        num_layers: int,
        *,
        stages: int,
        replicas: int = 1,
        memory_mb: int = 3008,
        micro_batches: int = 1,
    ) -> Plan:
        """A hand-made plan: ``num_layers`` layers cut into ``stages`` stages of (nearly) equal
        layer counts, every stage on ``replicas`` functions of ``memory_mb``.

        Layer counts are not work or memory: ResNet-101 on 2 stages this way puts 13 M parameters
        in one stage and 29.5 M in the other, and nothing checks that a stage fits its memory.
        It is for a quick, predictable layout (tests, `funcpipe train --stages/--replicas`);
        to choose stages, memory, replicas and micro-batches for time and cost, use the planner:
        ``funcpipe.optimize(funcpipe.profile(model, batch, ...), platform, batch_size=B)``
        (what `funcpipe train` does without --plan or --stages/--replicas/--memory-mb), and
        ``funcpipe.predict`` to see any plan's time, cost and memory before running it.
        """
        if not 1 <= stages <= num_layers:
            raise ConfigError(
                f"stages is {stages} but the model has {num_layers} layers: "
                f"use 1 <= stages <= {num_layers}"
            )
        bounds = [round(i * num_layers / stages) for i in range(stages + 1)]
        return cls(
            stages=[
                Stage(start=a, end=b, replicas=replicas, memory_mb=memory_mb)
                for a, b in zip(bounds, bounds[1:], strict=False)
            ],
            micro_batches=micro_batches,
        )

    def to_json(self) -> str:
        # the default schedule is left out, so plans written before it existed read the same
        skip = {"schedule"} if self.schedule == "gpipe" else None
        return self.model_dump_json(indent=2, exclude=skip)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"plan is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("plan JSON must be an object with 'stages' and 'micro_batches'")
        return cls(**data)


def _explain(exc: ValidationError, what: str) -> str:
    """Turn pydantic's report into one line per problem, each naming the field and the fix."""
    model = Stage if what == "Stage" else Plan
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ").removeprefix("invalid Stage: ")
        msg = msg.removeprefix("Stage: ")
        if err["type"] == "extra_forbidden":
            name = str(err["loc"][-1])
            fields = list(model.model_fields)
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            msg = f"unknown field {name!r}; {hint}the fields are {', '.join(fields)}"
            loc = ".".join(str(p) for p in err["loc"][:-1])
        lines.append(f"{what}.{loc}: {msg}" if loc else f"{what}: {msg}")
    return "invalid " + what + ": " + "; ".join(lines)
