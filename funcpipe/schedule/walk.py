"""The one walker: how a function goes through its lowered list.

Both interpreters drive it: the executor with real threads and storage, the simulator with
events and modelled links and CPU. The rules, for each action in list order:

* wait for the action's dependencies (:func:`~funcpipe.schedule.rules.local_deps`) that are not
  known to be done yet (a queued transfer is awaited; compute is done when the walk passes it);
* a compute action, or a transfer on a lane of width 0, then runs inline on the walking thread;
* any other transfer is queued on its lane (a FIFO queue served by that lane's width of threads)
  and the walk goes on; with ``overlap=False`` a transfer of the upload and download lanes is
  awaited where it is listed (the same schedule without communication/compute overlap);
* at the end every transfer still in flight is awaited.

A put on another function's list completes a get of the same channel; the walker does not
know of other functions, which is what the interpreters provide.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import Enum
from typing import NamedTuple

from funcpipe.errors import ScheduleError
from funcpipe.schedule.actions import Action, Lane
from funcpipe.schedule.rules import dependencies


class Do(str, Enum):
    SUBMIT = "submit"  # queue the action on its lane
    AWAIT = "await"  # block until a queued action is done
    RUN = "run"  # run the action inline on the walking thread


class Instruction(NamedTuple):
    do: Do
    action: Action


#: Lanes whose transfers ``overlap=False`` awaits where they are listed.
OVERLAPPED = (Lane.UPLOAD, Lane.DOWNLOAD)


def inline(action: Action, widths: Mapping[Lane, int]) -> bool:
    """Whether ``action`` runs on the walking thread (compute, or a lane of width 0)."""
    return action.lane is Lane.COMPUTE or widths.get(action.lane, 1) == 0


def walk(
    actions: list[Action],
    widths: Mapping[Lane, int],
    *,
    overlap: bool = True,
    deps: Mapping[Action, list[Action]] | None = None,
) -> Iterator[Instruction]:
    """What to submit, await and run next, in order; ``deps`` defaults to the rule's."""
    deps = dependencies(actions) if deps is None else deps
    done: set[Action] = set()
    queued: dict[Action, None] = {}  # submitted, not yet awaited (insertion-ordered)
    for a in actions:
        for d in deps[a]:
            if d in done:
                continue
            if d not in queued:
                raise ScheduleError(f"{a} waits for {d}, which is listed after it")
            del queued[d]
            done.add(d)
            yield Instruction(Do.AWAIT, d)
        if inline(a, widths):
            done.add(a)
            yield Instruction(Do.RUN, a)
            continue
        yield Instruction(Do.SUBMIT, a)
        if not overlap and a.lane in OVERLAPPED:
            done.add(a)
            yield Instruction(Do.AWAIT, a)
        else:
            queued[a] = None
    for a in list(queued):
        yield Instruction(Do.AWAIT, a)
