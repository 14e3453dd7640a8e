"""The paper's models (ResNet-101, AmoebaNet-D, BERT-Large) as cut-able layer sequences.

`build(name)` returns an nn.Sequential whose every boundary is a legal pipeline cut: between
layers flows a Tensor or a tuple of Tensors. `to_sequential` converts other modules.
"""

from funcpipe.models.fx_split import to_sequential
from funcpipe.models.losses import classification_loss, masked_lm_loss
from funcpipe.models.registry import Task, build, describe, kind_of, list_models, task_for
from funcpipe.models.summary import LayerSummary, layer_summary

__all__ = [
    "LayerSummary",
    "Task",
    "build",
    "classification_loss",
    "describe",
    "kind_of",
    "layer_summary",
    "list_models",
    "masked_lm_loss",
    "task_for",
    "to_sequential",
]
