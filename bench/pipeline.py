"""What overlapping communication with compute buys: the same schedule with and without lanes.

Trains the demo CNN on 2 stages (1 function each, Lambda-like 70 MB/s links, 10 ms per request)
for a few steps at several micro-batch counts. ``overlap=True`` is FuncPipe's executor (uploads
and downloads on their own threads, the pipeline's communication stages); ``overlap=False`` runs
the identical action lists but waits for each transfer where it is listed. Both are measured in
the same run; the headline is the speedup of overlap over the blocking baseline.

    python bench/pipeline.py [--batch-size 256] [--micro-batches 1 4 8] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from torch import nn

from funcpipe import LinkConfig, Plan, Stage, train
from funcpipe.client.demo import demo_cnn


def run(batch_size: int, micro: int, steps: int, overlap: bool, link: LinkConfig) -> dict:
    torch.manual_seed(0)
    model = demo_cnn()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(batch_size, 3, 32, 32, generator=g),
         torch.randint(0, 10, (batch_size,), generator=g))
        for _ in range(steps)
    ]  # fmt: skip
    plan = Plan(
        stages=[Stage(start=0, end=6, memory_mb=3538), Stage(start=6, end=12, memory_mb=3538)],
        micro_batches=micro,
    )
    result = train(
        model, nn.CrossEntropyLoss(), optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        batches=batches, plan=plan, steps=steps, link=link, overlap=overlap, progress=False,
    )  # fmt: skip
    iters = [h.iteration_s for h in result.history[1:]]  # step 0 includes start-up
    moved = result.history[-1].bytes_up + result.history[-1].bytes_down
    return {"iteration_s": statistics.median(iters), "mb_moved": moved / 1e6,
            "loss": result.history[-1].loss}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--bandwidth", type=float, default=70.0)
    ap.add_argument("--latency-ms", type=float, default=10.0)
    args = ap.parse_args(argv)
    link = LinkConfig(args.bandwidth, args.bandwidth, args.latency_ms / 1000)
    print(f"demo CNN, 2 stages x 1 function, batch {args.batch_size}, {args.bandwidth:g} MB/s, "
          f"{args.latency_ms:g} ms/request, median of steps 1..{args.steps - 1}")  # fmt: skip
    figures = {}
    for m in args.micro_batches:
        on = run(args.batch_size, m, args.steps, True, link)
        off = run(args.batch_size, m, args.steps, False, link)
        assert abs(on["loss"] - off["loss"]) < 1e-5, "overlap must not change the maths"
        speedup = off["iteration_s"] / on["iteration_s"]
        print(f"M={m}: blocking {off['iteration_s']:.3f} s | overlapped {on['iteration_s']:.3f} s"
              f" | speedup {speedup:.2f}x | {on['mb_moved']:.1f} MB moved per step")  # fmt: skip
        figures[f"M{m}"] = {"blocking_s": round(off["iteration_s"], 4),
                            "overlapped_s": round(on["iteration_s"], 4),
                            "speedup": round(speedup, 3)}  # fmt: skip
    print(json.dumps({"bench": "pipeline", "batch_size": args.batch_size, **figures}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
