"""The tasks' ground-truth motifs (method.md §3), shared by the simulators and the analysis, and the
rules that decide which TomTom target counts as a ground-truth TF (method.md §4.1 item 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from hybridlens.analysis.errors import UserError

#: Task 1's ground-truth motifs (JASPAR 2016), in label order.
TASK1_MOTIFS: dict[str, str] = {
    "Arid3a": "MA0151.1",
    "CEBPB": "MA0466.2",
    "FOSL1": "MA0477.1",
    "Gabpa": "MA0062.2",
    "MAFK": "MA0496.1",
    "MAX": "MA0058.3",
    "MEF2A": "MA0052.3",
    "NFYB": "MA0502.1",
    "SP1": "MA0079.3",
    "SRF": "MA0083.3",
    "STAT1": "MA0137.3",
    "YY1": "MA0095.2",
}
#: Task 2's core motifs (JASPAR 2016).
TASK2_CORE_MOTIFS: dict[str, str] = {
    "SP1": "MA0079.3",
    "Gabpa": "MA0062.2",
    "CEBPB": "MA0466.2",
    "MAX": "MA0058.3",
    "YY1": "MA0095.2",
}


def base_id(matrix_id: str) -> str:
    """``MA0151.1`` -> ``MA0151`` (a TF's identity across JASPAR versions)."""
    return matrix_id.split(".")[0]


#: The released code's hard-coded ground-truth ID lists (method.md §4.1 item 5), keyed by each TF's
#: simulated motif (JASPAR 2016 ID). They accept sibling matrices (Arid3b MA0601.1, PB0001.1, NFYA
#: MA0060.1/.2, MEF2B MA0660.1 and MEF2D MA0773.1, the last two filed under STAT1 in the code) and
#: miss the newer versions in JASPAR 2020 (MA0062.3, MA0477.2, MA0496.3, MA0052.4, MA0060.3,
#: MA0502.2, MA0079.4).
REFERENCE_LISTS: dict[str, tuple[str, ...]] = {
    "MA0151.1": ("MA0151.1", "MA0601.1", "PB0001.1"),  # Arid3
    "MA0466.2": ("MA0466.1", "MA0466.2"),  # CEBPB
    "MA0477.1": ("MA0477.1",),  # FOSL1
    "MA0062.2": ("MA0062.1", "MA0062.2"),  # GABPA
    "MA0496.1": ("MA0496.1", "MA0496.2"),  # MAFK
    "MA0058.3": ("MA0058.1", "MA0058.2", "MA0058.3"),  # MAX
    "MA0052.3": ("MA0052.1", "MA0052.2", "MA0052.3"),  # MEF2A
    "MA0502.1": ("MA0502.1", "MA0060.1", "MA0060.2"),  # NFYB
    "MA0079.3": ("MA0079.1", "MA0079.2", "MA0079.3"),  # SP1
    "MA0083.3": ("MA0083.1", "MA0083.2", "MA0083.3"),  # SRF
    "MA0137.3": ("MA0137.1", "MA0137.2", "MA0137.3", "MA0660.1", "MA0773.1"),  # STAT1
    "MA0095.2": ("MA0095.1", "MA0095.2"),  # YY1
}
#: ``base_ids``: any version of a ground-truth TF's JASPAR base ID (SPEC's default);
#: ``reference_lists``: exactly the released code's lists.
GROUND_TRUTH_RULES = ("base_ids", "reference_lists")


@dataclass(frozen=True)
class GroundTruth:
    """Which TomTom targets count as a ground-truth TF, under one of :data:`GROUND_TRUTH_RULES`.

    ``names`` maps a key (a base ID under ``base_ids``, a matrix ID under ``reference_lists``) to the
    TF's name; build it with :meth:`from_motifs`.
    """

    names: Mapping[str, str]
    rule: str = "base_ids"

    @classmethod
    def from_motifs(cls, motifs: Mapping[str, str], rule: str = "base_ids") -> "GroundTruth":
        """From the simulated ground-truth motifs, matrix ID -> TF name (e.g. :data:`TASK1_MOTIFS`
        inverted)."""
        if rule == "base_ids":
            return cls({base_id(i): n for i, n in motifs.items()}, rule)
        if rule == "reference_lists":
            missing = sorted(set(motifs) - set(REFERENCE_LISTS))
            if missing:
                raise UserError(f"the reference lists have no entry for {', '.join(missing)}; use ground truth 'base_ids'")
            return cls({t: n for i, n in motifs.items() for t in REFERENCE_LISTS[i]}, rule)
        raise UserError(f"unknown ground-truth rule {rule!r}; choose one of {', '.join(GROUND_TRUTH_RULES)}")

    def match(self, target_id: str) -> str | None:
        """The ground-truth TF name that ``target_id`` counts as, or None."""
        return self.names.get(base_id(target_id) if self.rule == "base_ids" else target_id)
