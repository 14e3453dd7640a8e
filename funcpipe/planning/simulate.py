"""Discrete-event simulation of a plan: the runtime's own action lists, replayed against a model
of the platform.

What is replayed is exactly what runs: the plan's schedule lowered as ``train`` lowers it, each
function going through its list by the one walker (:func:`funcpipe.schedule.walk`) that the
executor also follows. The platform is modelled after the runtime's code:

* **link** (:class:`~funcpipe.storage.throttle.ThrottledStorage`): per function, one byte stream
  per direction at the platform's rate (through a token bucket where the platform's link has a
  burst, as the emulator's does), shared equally by the requests of that function in flight
  (the emulator's bucket serves their slices in turn); an upload becomes visible once its
  bytes are across and returns one request latency later; a download is noticed at the next
  poll of ``Storage.wait`` (a poll that misses pays the latency too, then the wait pauses
  0.5 ms doubling to ``POLL_MAX_S``), then pays the latency, then its bytes.
* **compute**: forward/backward/optimizer step times from the :class:`Profile` at the CPU share of
  the stage's memory. On a platform whose functions share one host (``host_cores``, the local
  emulator) busy functions split the cores max-min fairly, each capped at its share: a function
  whose demand cannot be met runs proportionally slower. Under a CPU quota per period (the
  emulator's CFS bandwidth control) a function's threads run at full speed while its quota
  lasts, then at its share's rate (the quota as a bucket refilled at that rate, the average
  of the kernel's per-period throttling over a period's phases).
* **gradient sync**: the lowered SYNC's pieces (:mod:`funcpipe.schedule.lower`), moved on the
  sync lanes of the runtime's width (pipelined: ``IN_FLIGHT`` requests per direction; naive: on
  the walking thread, one phase after another), with replica 0's clean-up.
* **client**: data is fed two steps ahead, so a step's inputs and targets are in storage when it
  starts; the client's requests (feeding, polling reports) are counted for the cost.
* **between steps**: each function writes its report (one PUT through its link), then starts the
  next step at once; steps overlap across functions exactly as they do at run time.

Several steps are simulated back to back; ``time_s`` is the steady-state period (end of the last
step minus end of the first, divided by the steps in between), the figure a measured run's
``(end[last] - end[0]) / (steps - 1)`` gives.

The parts live in :mod:`funcpipe.planning.sim` (kernel, link, cpu, lanes, replay, prediction);
this module is their public face.
"""

from __future__ import annotations

from funcpipe.planning.sim.prediction import MONITOR_POLL_S as MONITOR_POLL_S
from funcpipe.planning.sim.prediction import SIM_STEPS as SIM_STEPS
from funcpipe.planning.sim.prediction import (
    FunctionBreakdown,
    Prediction,
    predict,
    simulate,
)
from funcpipe.planning.sim.replay import REPORT_BYTES_PER_ACTION as REPORT_BYTES_PER_ACTION

__all__ = ["FunctionBreakdown", "Prediction", "predict", "simulate"]
