"""The schedule's public names where they have always been; see :mod:`funcpipe.schedule`."""

from funcpipe.schedule.actions import (
    CLIENT,
    LANE,
    Action,
    Lane,
    Op,
    Schedule,
    WorkerId,
    format_schedule,
)
from funcpipe.schedule.build import build_eval_schedule, build_schedule
from funcpipe.schedule.channels import Channel, channel
from funcpipe.schedule.rules import local_deps

__all__ = [
    "CLIENT",
    "LANE",
    "Action",
    "Channel",
    "Lane",
    "Op",
    "Schedule",
    "WorkerId",
    "build_eval_schedule",
    "build_schedule",
    "channel",
    "format_schedule",
    "local_deps",
]
