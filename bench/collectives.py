"""Gradient synchronisation through storage: naive vs pipelined scatter-reduce.

Each of n replicas is a thread with its own throttled link (default 70 MB/s each way, 10 ms per
request) onto one shared store, as functions share one bucket but not one NIC. The store is an
in-process dict by default, so the emulator's own copies (tmpfs writes and reads, page faults)
do not eat the CPU the replicas share; ``--storage local`` uses files under /dev/shm instead.
For every n the replicas all-reduce S bytes of float32 gradients with three variants:
``naive``, ``paper`` (pipelined, subchunks=1) and ``pipelined`` (default sub-chunks), and the
times are compared with the duplex lower bound 2(n-1)/n * S/B. Results are checked against
the mean, and the store is checked empty afterwards. The last line printed is one JSON object.

    python bench/collectives.py                      # 64 MB, n = 2, 4, 8
    python bench/collectives.py --quick              # 8 MB, n = 2, 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from funcpipe.runtime.collectives import all_reduce, default_subchunks
from funcpipe.storage import (
    LinkConfig,
    LocalDirStorage,
    MemoryStorage,
    Storage,
    ThrottledStorage,
    default_local_root,
)

VARIANTS = {
    "naive": {"algorithm": "naive"},
    "paper": {"algorithm": "pipelined", "subchunks": 1},
    "pipelined": {"algorithm": "pipelined"},
}


def run_once(
    store: Storage, inputs: list[torch.Tensor], link: LinkConfig, prefix: str, **kw
) -> tuple[float, list[torch.Tensor]]:
    """Time one all-reduce: from a common start until the slowest replica returns."""
    world = len(inputs)
    results: list[torch.Tensor | None] = [None] * world
    ends = [0.0] * world
    errors: list[BaseException] = []
    barrier = threading.Barrier(world + 1)

    def replica(rank: int) -> None:
        link_store = ThrottledStorage(store, link)
        barrier.wait()
        try:
            results[rank] = all_reduce(
                link_store, inputs[rank], rank=rank, world=world, key_prefix=prefix, **kw
            )
        except BaseException as exc:  # re-raised below
            errors.append(exc)
        ends[rank] = time.perf_counter()

    threads = [threading.Thread(target=replica, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return max(ends) - start, results  # type: ignore[return-value]


def bench(
    sizes_mb: list[float], ns: list[int], repeat: int, link: LinkConfig, storage: str
) -> dict:
    default_local_root().mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-collectives-", dir=default_local_root()))
    store: Storage = LocalDirStorage(root) if storage == "local" else MemoryStorage()
    bandwidth = min(link.up_mb_s, link.down_mb_s) * 1e6
    report: dict = {"link": vars(link).copy(), "repeat": repeat, "storage": storage, "runs": []}
    try:
        for size_mb in sizes_mb:
            numel = int(size_mb * 1e6 / 4)
            nbytes = 4 * numel
            for n in ns:
                g = torch.Generator().manual_seed(n)
                inputs = [torch.randn(numel, generator=g) for _ in range(n)]
                expected = torch.stack(inputs).double().mean(0).float()
                bound = 2 * (n - 1) / n * nbytes / bandwidth
                row: dict = {"size_mb": size_mb, "n": n, "bound_s": bound,
                             "subchunks": default_subchunks(numel, n)}  # fmt: skip
                for name, kw in VARIANTS.items():
                    times = []
                    for r in range(repeat):
                        prefix = f"bench/{name}/n{n}/r{r}"
                        seconds, results = run_once(store, inputs, link, prefix, **kw)
                        times.append(seconds)
                        for out in results:
                            torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
                        if store.list("bench/"):
                            raise AssertionError(f"{name}: keys left under {prefix!r}")
                        del results
                    row[f"{name}_s"] = statistics.median(times)
                row["speedup_vs_naive"] = row["naive_s"] / row["pipelined_s"]
                row["paper_speedup_vs_naive"] = row["naive_s"] / row["paper_s"]
                for name in VARIANTS:
                    row[f"{name}_efficiency"] = bound / row[f"{name}_s"]
                report["runs"].append(row)
                print(
                    f"S={size_mb:g} MB n={n}: naive {row['naive_s']:.3f} s | "
                    f"paper {row['paper_s']:.3f} s | pipelined {row['pipelined_s']:.3f} s "
                    f"(k={row['subchunks']}) | speedup {row['speedup_vs_naive']:.2f}x "
                    f"(paper {row['paper_speedup_vs_naive']:.2f}x) | bound {bound:.3f} s, "
                    f"efficiency naive {row['naive_efficiency']:.2f} paper "
                    f"{row['paper_efficiency']:.2f} pipelined {row['pipelined_efficiency']:.2f}",
                    flush=True,
                )
                del inputs
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[64.0],
                        help="gradient bytes per replica, in MB (1e6 bytes)")  # fmt: skip
    parser.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8], help="replica counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median kept)")
    parser.add_argument("--quick", action="store_true", help="8 MB, n = 2 4, one run")
    parser.add_argument("--mb-s", type=float, default=70.0, help="link rate each way, MB/s")
    parser.add_argument("--latency", type=float, default=0.01, help="seconds per request")
    parser.add_argument(
        "--storage",
        choices=["memory", "local"],
        default="memory",
        help="shared store: in-process dict (default) or files under the local root (/dev/shm)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes_mb, args.ns, args.repeat = [8.0], [2, 4], 1
    if args.repeat < 1 or any(n < 2 for n in args.ns) or any(s <= 0 for s in args.sizes_mb):
        parser.error("need --repeat >= 1, every n >= 2 and every size > 0")
    link = LinkConfig(up_mb_s=args.mb_s, down_mb_s=args.mb_s, latency_s=args.latency)
    report = bench(args.sizes_mb, args.ns, args.repeat, link, args.storage)
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
