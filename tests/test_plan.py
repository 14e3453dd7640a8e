"""Plans are validated up front with errors that name the field and the fix."""

from __future__ import annotations

import pytest

from funcpipe import Plan, Stage
from funcpipe.errors import ConfigError
from funcpipe.platform_profiles import ALIBABA_FC, AWS_LAMBDA


def test_valid_plan_helpers() -> None:
    plan = Plan(
        stages=[
            Stage(start=0, end=3, replicas=2, memory_mb=2048),
            Stage(start=3, end=7, replicas=1, memory_mb=3008),
        ],
        micro_batches=4,
    )
    assert plan.num_layers == 7 and plan.num_functions == 3
    assert plan.micro_batches_of(0, 1) == [1, 3]
    assert plan.replica_of(0, 3) == 1
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(stages=[Stage(start=0, end=3), Stage(start=4, end=7)]),
            r"gap .* stages\[1\].start = 3",
        ),
        (dict(stages=[Stage(start=0, end=3), Stage(start=2, end=7)]), r"overlap"),
        (dict(stages=[Stage(start=1, end=3)]), r"first stage must start at layer 0"),
        (dict(stages=[]), r"stages is empty"),
        (dict(stages=[Stage(start=0, end=3, replicas=3)], micro_batches=2), r"replicas <= 2"),
        (dict(stages=[Stage(start=0, end=3)], micro_batches=0), r"micro_batches"),
    ],
)
def test_invalid_plans(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Plan(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(start=0, end=3, replicas=0), r"replicas: must be >= 1"),
        (dict(start=3, end=3), r"end \(3\) must be greater than start"),
        (dict(start=-1, end=3), r"start: must be >= 0"),
        (dict(start=0, end=3, memory_mb=0), r"memory_mb: must be a positive number of MB"),
        (dict(start=0, end=3, memroy_mb=64), r"memroy_mb"),
    ],
)
def test_invalid_stages(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Stage(**kwargs)


def test_model_and_batch_checks() -> None:
    plan = Plan(stages=[Stage(start=0, end=5)], micro_batches=4)
    with pytest.raises(ConfigError, match="model has 7 layers: set stages\\[-1\\].end = 7"):
        plan.check_model(7)
    with pytest.raises(ConfigError, match="only 3 samples"):
        plan.check_batch(3)


def test_even_plan() -> None:
    plan = Plan.even(12, stages=2, replicas=2, memory_mb=2048, micro_batches=4)
    assert [(s.start, s.end, s.replicas, s.memory_mb) for s in plan.stages] == [
        (0, 6, 2, 2048),
        (6, 12, 2, 2048),
    ]
    assert [(s.start, s.end) for s in Plan.even(7, stages=3).stages] == [(0, 2), (2, 5), (5, 7)]
    with pytest.raises(ConfigError, match="use 1 <= stages <= 3"):
        Plan.even(3, stages=4)


def test_misspelled_fields_get_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"stages.0: unknown field 'replica'; did you mean"):
        Plan(stages=[{"start": 0, "end": 6, "replica": 2}])
    with pytest.raises(ConfigError, match=r"unknown field 'micro_batchs'; did you mean"):
        Plan(stages=[Stage(start=0, end=3)], micro_batchs=3)


@pytest.mark.parametrize(
    "field,value",
    [
        ("replicas", True),
        ("replicas", "2"),
        ("replicas", 2.0),
        ("memory_mb", "2048"),
        ("start", False),
        ("end", 3.5),
    ],
)
def test_stage_fields_are_strict_integers(field: str, value: object) -> None:
    fields = {"start": 0, "end": 3, field: value}
    with pytest.raises(ConfigError, match=rf"Stage.{field}: must be an integer, got"):
        Stage(**fields)


def test_plan_fields_are_strict_integers() -> None:
    with pytest.raises(ConfigError, match=r"Plan.micro_batches: must be an integer, got bool"):
        Plan(stages=[Stage(start=0, end=3)], micro_batches=True)
    text = '{"stages": [{"start": 0, "end": 3, "replicas": "2"}], "micro_batches": 2}'
    with pytest.raises(ConfigError, match=r"stages.0: Stage.replicas: must be an integer, got str"):
        Plan.from_json(text)


def test_integer_like_values_are_accepted() -> None:
    np = pytest.importorskip("numpy")
    stage = Stage(start=np.int64(0), end=np.int32(3), replicas=2)
    assert stage.end == 3 and type(stage.end) is int


def test_the_memory_range_is_the_platforms() -> None:
    """A plan takes any positive size; each platform's limits say what it runs (Alibaba FC up to
    32 GB, Lambda up to 10,240 MB), naming the stage, the range and the fix."""
    small, large = Stage(start=0, end=2, memory_mb=2048), Stage(start=2, end=4, memory_mb=32768)
    plan = Plan(stages=[small, large])
    ALIBABA_FC.limits.check_plan(plan, ALIBABA_FC.name)
    with pytest.raises(
        ConfigError,
        match=r"stages\[1\].memory_mb=32768 is outside aws-lambda's range 128..10240 MB; pick",
    ):
        AWS_LAMBDA.limits.check_plan(plan, AWS_LAMBDA.name)
    assert Plan.from_json(plan.to_json()) == plan  # a 32 GB plan's JSON reads back
    with pytest.raises(ConfigError, match=r"stages\[0\].memory_mb=200 is not a multiple of"):
        ALIBABA_FC.limits.check_plan(Plan.even(2, stages=1, memory_mb=200), "alibaba-fc")
    with pytest.raises(ConfigError, match="outside this platform's range 128..10240"):
        AWS_LAMBDA.limits.check_plan(Plan.even(2, stages=1, memory_mb=64))


def test_old_plan_imports_still_work() -> None:
    from funcpipe.planning import plan as old

    assert old.Plan is Plan and old.Stage is Stage
    assert (old.MIN_MEMORY_MB, old.MAX_MEMORY_MB) == (128, 10240)  # Lambda's, for old callers
