"""FuncPipe: pipelined, data-parallel training of PyTorch models on serverless functions."""

from funcpipe.client.save import load_into
from funcpipe.client.train import StepStats, TrainResult, train
from funcpipe.planning.optimize import optimize
from funcpipe.planning.plan import Plan, Stage
from funcpipe.planning.profile import Profile, profile
from funcpipe.planning.simulate import Prediction, predict
from funcpipe.storage.throttle import LinkConfig

__version__ = "0.1.0"
__all__ = [
    "LinkConfig",
    "Plan",
    "Prediction",
    "Profile",
    "Stage",
    "StepStats",
    "TrainResult",
    "load_into",
    "optimize",
    "predict",
    "profile",
    "train",
]
