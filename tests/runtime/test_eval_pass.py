"""The validation pass through the pipeline scores exactly what the whole model scores."""

from __future__ import annotations

import threading

import torch
from torch import nn

from funcpipe import codec
from funcpipe.planning.plan import Plan, Stage
from funcpipe.runtime import keys
from funcpipe.runtime.check import check_schedule
from funcpipe.runtime.executor import Executor
from funcpipe.runtime.schedule import Channel, WorkerId, build_eval_schedule, build_schedule
from funcpipe.runtime.stage import StageRunner
from funcpipe.storage.memory import MemoryStorage


def test_eval_pass_equals_single_process_evaluation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    plan = Plan(stages=[Stage(start=0, end=2), Stage(start=2, end=4, replicas=2)], micro_batches=2)
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    micro = 5  # 20 samples in micro-batches of 4
    eval_sched = build_eval_schedule(plan, micro)
    check_schedule(eval_sched)
    store = MemoryStorage()
    for b, (xb, yb) in enumerate(zip(x.split(4), y.split(4), strict=True)):
        store.put(keys.eval_transfer(3, Channel("input", -1, b)), codec.encode(xb))
        meta = {"weight": repr(len(yb) / len(y))}
        store.put(keys.eval_transfer(3, Channel("target", -1, b)), codec.encode(yb, meta))
    train_sched = build_schedule(plan)
    traces: dict[WorkerId, object] = {}

    def run(worker: WorkerId) -> None:
        stage = plan.stages[worker.stage]
        runner = StageRunner(model[stage.start : stage.end], stage=worker.stage,
                             is_first=worker.stage == 0, is_last=worker.stage == 1,
                             loss_fn=nn.CrossEntropyLoss(),
                             optimizer=lambda p: torch.optim.SGD(p, lr=0.1))  # fmt: skip
        ex = Executor(worker, train_sched[worker], runner, store, replicas=stage.replicas,
                      timeout_s=10, eval_actions=eval_sched[worker])  # fmt: skip
        try:
            traces[worker] = ex.run_step(3, evaluate=True)
        finally:
            ex.close()

    threads = [threading.Thread(target=run, args=(w,)) for w in eval_sched if w.stage >= 0]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    last = [traces[WorkerId(1, r)] for r in range(2)]
    assert all(m.training for m in model.modules())  # the pass put its layers back in training
    model.eval()
    with torch.no_grad():
        out = model(x)
    want_loss = float(nn.CrossEntropyLoss()(out, y))
    assert abs(sum(t.loss for t in last) - want_loss) < 1e-5
    assert sum(t.counted for t in last) == 20
    assert sum(t.correct for t in last) == int((out.argmax(-1) == y).sum())
    # Inputs and targets stay for the next pass; nothing else is left behind.
    assert sorted(k.split("/")[0] for k in store.list("")) == ["evaldata"] * 10
