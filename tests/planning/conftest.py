from __future__ import annotations

import pytest
import torch

from funcpipe.client.demo import demo_cnn
from funcpipe.planning.profile import Profile
from funcpipe.planning.profiler import profile


@pytest.fixture(scope="session")
def cnn_profile() -> Profile:
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    return profile(
        demo_cnn(), (x, y), loss_fn=torch.nn.CrossEntropyLoss(), micro_batch_sizes=[2, 4],
        repeats=1, runtime_base_mb=300.0,
    )  # fmt: skip
