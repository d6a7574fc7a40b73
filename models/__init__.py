"""hybridlens models: the paper's CNN / BiLSTM / attention / transformer hybrids in PyTorch.

>>> from hybridlens.models import build, GRID
>>> model = build("C4C6-LSTM-Trans2", "task1", "exp")   # (N, 4, 200) -> (N, 12) logits
"""

from hybridlens.models.grid import (
    ARCHITECTURES,
    GRID,
    TASK_SIZES,
    TASKS,
    ArchSpec,
    Hybrid,
    Sizes,
    build,
    count_parameters,
    family,
    resolve_sizes,
)

__all__ = [
    "ARCHITECTURES",
    "family",
    "GRID",
    "TASK_SIZES",
    "TASKS",
    "ArchSpec",
    "Hybrid",
    "Sizes",
    "build",
    "count_parameters",
    "resolve_sizes",
]
