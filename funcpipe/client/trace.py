"""``chrome_trace`` where it has always been; see :mod:`funcpipe.runtime.trace`."""

from funcpipe.runtime.trace import chrome_trace

__all__ = ["chrome_trace"]
