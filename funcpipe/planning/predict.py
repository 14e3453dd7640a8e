"""``funcpipe.predict``: a plan's time, cost and memory on a platform (see simulate.py)."""

from funcpipe.planning.simulate import FunctionBreakdown, Prediction, predict

__all__ = ["FunctionBreakdown", "Prediction", "predict"]
