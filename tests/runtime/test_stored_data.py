"""Functions read their own micro-batches from a data set in storage: same result, no feeding."""

from __future__ import annotations

import pytest
import torch
from test_equivalence import FAST_LINK, OPTIMIZERS, PLANS, make_model, reference
from torch import nn

from funcpipe import train
from funcpipe.data.stored import stored_batches, upload_dataset
from funcpipe.runtime import keys
from funcpipe.storage import open_storage


def test_functions_read_their_micro_batches_from_storage(tmp_path) -> None:
    url = f"local://{tmp_path}"
    g = torch.Generator().manual_seed(3)
    inputs, targets = torch.randn(40, 3, 8, 8, generator=g), torch.randint(0, 5, (40,), generator=g)
    ref = upload_dataset(url, "toy", (inputs, targets), shard_samples=7)
    plan = PLANS["3-stages-1-2-3"]
    model, loss_fn, opt = make_model(), nn.CrossEntropyLoss(), OPTIMIZERS["adam"]
    result = train(
        model, loss_fn, optimizer=opt, data=ref, batch_size=10, steps=3, plan=plan,
        storage=url, link=FAST_LINK, progress=False, timeout_s=60,
    )  # fmt: skip
    with open_storage(url) as store:
        batches = list(stored_batches(store, ref, batch_size=10, micro_batches=4))[:3]
    expected, losses = reference(model, loss_fn, opt, batches)
    for name, p in expected.named_parameters():
        torch.testing.assert_close(
            dict(result.model.named_parameters())[name], p, rtol=0, atol=1e-5
        )
    assert [h.loss for h in result.history] == pytest.approx(losses, abs=1e-5)
    # The client fed nothing: no input or target was ever put under the job.
    assert result.client_requests["puts"] < 3 * 2 * 4
    with open_storage(url) as store:  # the job cleaned up after itself
        assert store.list(keys.job_prefix(result.job_id)) == []
