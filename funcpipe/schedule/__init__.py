"""The schedule: one action list per function, built, lowered, checked and walked.

Below the runtime and the planner, so both interpret the same lists: the executor runs them
with threads and storage, the simulator replays them as events.
"""

from funcpipe.schedule.actions import (
    CLIENT,
    GETS,
    LANE,
    PUTS,
    Action,
    Lane,
    Op,
    Schedule,
    WorkerId,
    format_schedule,
    parse_action,
)
from funcpipe.schedule.build import (
    SCHEDULES,
    build_eval_schedule,
    build_schedule,
    get_schedule,
    schedule_for,
)
from funcpipe.schedule.channels import Channel, channel
from funcpipe.schedule.lower import (
    lane_widths,
    lower,
    lowered_schedule,
    stage_layouts,
    sync_layout,
)
from funcpipe.schedule.rules import dependencies, local_deps
from funcpipe.schedule.validate import check_schedule
from funcpipe.schedule.walk import Do, Instruction, walk

__all__ = [
    "CLIENT",
    "GETS",
    "LANE",
    "PUTS",
    "SCHEDULES",
    "Action",
    "Channel",
    "Do",
    "Instruction",
    "Lane",
    "Op",
    "Schedule",
    "WorkerId",
    "build_eval_schedule",
    "build_schedule",
    "channel",
    "check_schedule",
    "dependencies",
    "format_schedule",
    "get_schedule",
    "lane_widths",
    "local_deps",
    "lower",
    "lowered_schedule",
    "parse_action",
    "stage_layouts",
    "schedule_for",
    "sync_layout",
    "walk",
]
