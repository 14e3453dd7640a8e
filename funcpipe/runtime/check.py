"""``check_schedule`` where it has always been; see :mod:`funcpipe.schedule.validate`."""

from funcpipe.schedule.validate import check_schedule

__all__ = ["check_schedule"]
