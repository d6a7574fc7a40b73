"""The tasks' ground-truth motifs (method.md §3), shared by the simulators and the analysis."""

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
