"""One home for every per-task fact (SPEC.md; method.md §1.5, §2, §3, §4): the study, the CLI, the
selection, the report and the figures read :data:`TASKS`; the models' layer sizes stay in
``hybridlens.models`` (:data:`~hybridlens.models.TASK_SIZES`), which this registry points to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

from hybridlens.analysis.errors import UserError
from hybridlens.analysis.ground_truth import TASK1_MOTIFS, TASK2_CORE_MOTIFS

if TYPE_CHECKING:  # the models (and torch) load only when sizes are asked for
    from hybridlens.models import Sizes


@dataclass(frozen=True)
class TaskSpec:
    """What hybridlens knows about one synthetic task."""

    name: str
    #: The paper's classification metric: the plateau / early-stopping monitor (``val_`` + it) and the
    #: best-k ranking metric.
    metric: str
    #: Runs kept per configuration (SPEC: 3 for Task 1, 5 for Task 2).
    top_k: int
    #: The published generator's seed and size.
    data_seed: int
    num_seqs: int
    #: TF name -> simulated JASPAR 2016 ID of the ground-truth motifs, and the dataset attribute that
    #: records their IDs in our files.
    ground_truth: Mapping[str, str]
    ground_truth_attr: str
    #: How the analysis scores interpretability: first-layer ``filters`` (TPR/FPR) or ``saliency``.
    interpretation: str
    interp_metrics: tuple[str, ...]
    #: The paper's exp-vs-relu figure and its panels.
    figure: str
    figure_metrics: tuple[str, ...]

    @property
    def monitor(self) -> str:
        return f"val_{self.metric}"

    @property
    def sizes(self) -> "Sizes":
        from hybridlens.models import TASK_SIZES

        return TASK_SIZES[self.name]

    @property
    def num_outputs(self) -> int:
        return self.sizes.num_outputs


TASKS: dict[str, TaskSpec] = {
    "task1": TaskSpec(
        name="task1",
        metric="aupr",
        top_k=3,
        data_seed=33,
        num_seqs=25_000,
        ground_truth=TASK1_MOTIFS,
        ground_truth_attr="motif_ids",
        interpretation="filters",
        interp_metrics=("tpr", "fpr"),
        figure="fig2_task1",
        figure_metrics=("test_aupr", "tpr", "fpr"),
    ),
    "task2": TaskSpec(
        name="task2",
        metric="auroc",
        top_k=5,
        data_seed=22,
        num_seqs=20_000,  # 10,000 positive + 10,000 negative
        ground_truth=TASK2_CORE_MOTIFS,
        ground_truth_attr="core_motif_ids",
        interpretation="saliency",
        interp_metrics=("saliency_auroc", "saliency_aupr", "saliency_snr"),
        figure="fig3_task2",
        figure_metrics=("test_auroc", "saliency_auroc", "saliency_aupr", "saliency_snr"),
    ),
}


def task_spec(task: str) -> TaskSpec:
    """The registry entry of ``task``; a one-line error naming the choices otherwise."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task]
