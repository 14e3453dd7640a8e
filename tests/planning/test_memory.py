"""The memory model's terms, on a profile whose every size is known."""

from __future__ import annotations

import pytest

from funcpipe.planning.memory import MB, stage_memory_mb


class Sizes:
    """Layer i: (i + 1) MB of parameters, as much optimizer state, saved activations of
    mb x (i + 1) MB, temporaries of mb MB, an output of mb x 10 x (i + 1) MB."""

    def param_bytes(self, i: int) -> float:
        return (i + 1) * MB

    def grad_bytes(self, i: int) -> float:
        return (i + 1) * MB

    def optimizer_bytes(self, i: int) -> float:
        return (i + 1) * MB

    def saved_bytes(self, i: int, mb: float) -> float:
        return mb * (i + 1) * MB

    def temp_bytes(self, i: int, mb: float) -> float:
        return mb * MB

    def activation_bytes(self, i: int, mb: float) -> float:
        return mb * 10 * (i + 1) * MB

    def working_bytes(self, i: int, mb: float) -> float:  # pragma: no cover - not read here
        return 0.0


def test_each_term() -> None:
    one = dict(micro_batch=2, held=3, replicas=1, base_mb=100.0)
    # stage [0, 2): parameters, gradients, state 3 MB each; 3 x saved (2 + 4) MB; temporaries 2 MB
    assert stage_memory_mb(Sizes(), 0, 2, **one) == 100 + 9 + 18 + 2
    # replicas: one more gradient buffer
    assert stage_memory_mb(Sizes(), 0, 2, **{**one, "replicas": 2}) == 100 + 12 + 18 + 2
    # a later stage keeps one copy of its first micro-batch's input (layer 1's output, 40 MB)
    # through the first step
    assert stage_memory_mb(Sizes(), 2, 3, **one) == 100 + 9 + 3 * 6 + 2 + 40


def test_predicted_memory_follows_what_the_schedule_holds(cnn_profile) -> None:
    """The simulator's memory need comes from the lists: 1F1B's first stage of four holds 4 of
    its 16 micro-batches' activations, GPipe's all 16."""
    from funcpipe import Plan, Stage
    from funcpipe.planning.simulate import predict

    stages = [Stage(start=3 * i, end=3 * i + 3) for i in range(4)]
    gpipe = predict(Plan(stages=stages, micro_batches=16), cnn_profile, "local", batch_size=64)
    one = predict(Plan(stages=stages, micro_batches=16, schedule="1f1b"), cnn_profile, "local",
                  batch_size=64)  # fmt: skip
    for s in range(4):

        def need(held: int, s: int = s) -> float:
            return stage_memory_mb(cnn_profile, 3 * s, 3 * s + 3, micro_batch=4, held=held,
                                   replicas=1, base_mb=0.0)  # fmt: skip

        base = gpipe.memory_mb[s] - need(16)  # the runtime's own memory, the same for both
        assert one.memory_mb[s] == pytest.approx(base + need(4 - s))
    assert one.memory_mb[0] < gpipe.memory_mb[0]
