"""Motifs: JASPAR access through pyjaspar (offline, bundled databases) and MEME v4 motif files.

One module serves the simulators (ground-truth motifs) and the analysis (filters, TomTom targets).
A motif's matrix is a position weight matrix (PWM) of probabilities with shape ``(4, L)``, rows in
A, C, G, T order (the JASPAR row order), length last.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from hybridlens.analysis.atomic import atomic_write_text
from hybridlens.analysis.errors import UserError
from hybridlens.analysis.ground_truth import base_id

ALPHABET = "ACGT"
#: The JASPAR release of the ground-truth motifs of both tasks (Koo & Eddy 2019; Koo & Ploenzke 2021).
SIMULATION_RELEASE = "JASPAR2016"
#: The release the paper's TomTom database came from (JASPAR 2020 CORE, all taxa, all versions).
ANALYSIS_RELEASE = "JASPAR2020"

#: The site count MEME assumes for a matrix that does not state one (and the one our files state for
#: filters, whose matrices are not counts).
DEFAULT_NSITES = 20
_ID_RE = re.compile(r"^[A-Z]{2}\d{4}(\.\d+)?$")


@dataclass(frozen=True, eq=False)
class Motif:
    """A named motif.

    Attributes
    ----------
    id : str
        Matrix ID, e.g. ``"MA0151.1"`` for JASPAR, or any name for filters (``"filter0"``).
    name : str
        Human-readable name (the TF for JASPAR motifs).
    pwm : numpy.ndarray
        Probabilities, shape ``(4, L)``, rows A, C, G, T.
    nsites : float or None
        The number of sites the matrix was counted from (JASPAR's column total, a MEME file's
        ``nsites=``), or None when unknown. MEME weighs its pseudocount against it.
    """

    id: str
    name: str
    pwm: np.ndarray = field(repr=False)
    nsites: float | None = None

    @property
    def width(self) -> int:
        return int(self.pwm.shape[1])

    @property
    def base_id(self) -> str:
        """The ID without its version suffix (``MA0151.1`` -> ``MA0151``)."""
        return base_id(self.id)

    def reverse_complement(self) -> "Motif":
        return Motif(self.id, self.name, reverse_complement(self.pwm), self.nsites)


def reverse_complement(pwm: np.ndarray) -> np.ndarray:
    """Reverse complement of a ``(4, L)`` matrix in A, C, G, T order (rows and columns reversed)."""
    pwm = np.asarray(pwm)
    if pwm.ndim != 2 or pwm.shape[0] != 4:
        raise ValueError(f"expected a (4, L) matrix, got shape {pwm.shape}")
    return pwm[::-1, ::-1].copy()


def pfm_to_pwm(counts: np.ndarray) -> np.ndarray:
    """Column-normalise a ``(4, L)`` count matrix to probabilities (float64, no pseudocounts)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != 4 or counts.shape[1] == 0:
        raise ValueError(f"expected a (4, L) count matrix with L >= 1, got shape {counts.shape}")
    totals = counts.sum(axis=0, keepdims=True)
    if np.any(totals <= 0) or np.any(counts < 0):
        raise ValueError("count matrix has a column with no counts or a negative count")
    return counts / totals


def information_content(pwm: np.ndarray, *, eps: float = 1e-10) -> np.ndarray:
    """Per-position information in bits, ``2 + sum_a p log2(p + eps)``.

    Parameters
    ----------
    pwm : numpy.ndarray
        Probabilities, shape ``(..., 4, L)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(..., L)``.
    """
    pwm = np.asarray(pwm, dtype=np.float64)
    return 2.0 + np.sum(pwm * np.log2(pwm + eps), axis=-2)


def validate_pwm(pwm: np.ndarray, name: str, *, atol: float = 1e-3) -> np.ndarray:
    """Return ``pwm`` as float64 ``(4, L)`` or raise a ValueError that names the motif."""
    arr = np.asarray(pwm, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != 4:
        raise ValueError(f"motif {name!r}: expected shape (4, L), got {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"motif {name!r}: width 0")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"motif {name!r}: entries must be finite and non-negative")
    sums = arr.sum(axis=0)
    bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
    if bad.size:
        raise ValueError(f"motif {name!r}: column {int(bad[0])} sums to {sums[bad[0]]:.4f}, not 1 (probabilities expected)")
    return arr


# --------------------------------------------------------------------------------------------- JASPAR


@functools.lru_cache(maxsize=None)
def available_releases() -> tuple[str, ...]:
    from pyjaspar import jaspardb

    return tuple(sorted(jaspardb().get_releases()))


@functools.lru_cache(maxsize=None)
def _jaspar(release: str):
    releases = available_releases()
    if release not in releases:
        raise UserError(f"unknown JASPAR release {release!r}; choose one of {', '.join(releases)}")
    from pyjaspar import jaspardb

    return jaspardb(release=release)


def _from_jaspar(m) -> Motif:
    counts = np.array([m.counts[a] for a in ALPHABET], dtype=np.float64)
    # the site count as MEME's converters record it: the first column's total, rounded
    return Motif(m.matrix_id, m.name, pfm_to_pwm(counts), float(round(counts[:, 0].sum())))


def fetch_motif(motif_id: str, release: str = SIMULATION_RELEASE) -> Motif:
    """Fetch one motif by its versioned matrix ID (e.g. ``"MA0151.1"``) from a bundled JASPAR release."""
    if not isinstance(motif_id, str) or not _ID_RE.match(motif_id) or "." not in motif_id:
        raise UserError(f"malformed JASPAR matrix ID {motif_id!r}; expected a versioned ID such as 'MA0151.1'")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = _jaspar(release).fetch_motif_by_id(motif_id)
    if m is None:
        raise UserError(f"JASPAR matrix ID {motif_id!r} is not in release {release}")
    return _from_jaspar(m)


def fetch_motifs(motif_ids: Iterable[str], release: str = SIMULATION_RELEASE) -> list[Motif]:
    """Fetch several motifs by versioned matrix ID, in the order given."""
    return [fetch_motif(i, release) for i in motif_ids]


@functools.lru_cache(maxsize=16)
def _collection(release: str, collection: str, tax_group: tuple[str, ...] | None, all_versions: bool):
    db = _jaspar(release)
    kwargs = dict(collection=collection, all_versions=all_versions)
    if tax_group:
        kwargs["tax_group"] = list(tax_group)
    return tuple(_from_jaspar(m) for m in db.fetch_motifs(**kwargs))


def fetch_collection(
    release: str = ANALYSIS_RELEASE,
    *,
    collection: str = "CORE",
    tax_group: Sequence[str] | None = None,
    all_versions: bool = False,
) -> list[Motif]:
    """All motifs of a JASPAR collection, e.g. the paper's TomTom database
    ``fetch_collection("JASPAR2020", all_versions=True)`` (1,964 matrices)."""
    return list(_collection(release, collection, tuple(tax_group) if tax_group else None, all_versions))


# ------------------------------------------------------------------------------------------ MEME files


def format_meme(motifs: Sequence[Motif], *, precision: int = 6) -> str:
    """MEME v4 text for ``motifs`` with a uniform background."""
    lines = [
        "MEME version 4",
        "",
        "ALPHABET= ACGT",
        "",
        "strands: + -",
        "",
        "Background letter frequencies",
        "A 0.25 C 0.25 G 0.25 T 0.25",
        "",
    ]
    seen: set[str] = set()
    for m in motifs:
        if not m.id or any(c.isspace() for c in m.id):
            raise ValueError(f"motif ID {m.id!r} is empty or has whitespace; MEME IDs are single words")
        if m.id in seen:
            raise ValueError(f"motif ID {m.id!r} appears twice; MEME files need unique IDs")
        seen.add(m.id)
        pwm = validate_pwm(m.pwm, m.id)
        header = f"MOTIF {m.id}" + (f" {m.name}" if m.name and m.name != m.id else "")
        nsites = DEFAULT_NSITES if m.nsites is None else m.nsites
        nsites = int(nsites) if float(nsites).is_integer() else repr(float(nsites))  # exact: reads back equal
        lines += [header, "", f"letter-probability matrix: alength= 4 w= {pwm.shape[1]} nsites= {nsites} E= 0"]
        lines += [" ".join(f"{v:.{precision}f}" for v in col) for col in pwm.T]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_meme(motifs: Sequence[Motif], path: str | os.PathLike, *, precision: int = 6) -> Path:
    """Write ``motifs`` to a MEME v4 file (atomically) and return its path."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    atomic_write_text(path, format_meme(motifs, precision=precision))
    return path


def read_meme(path: str | os.PathLike) -> list[Motif]:
    """Read the motifs of a MEME (v4 or later) text file, in file order.

    Raises
    ------
    ValueError
        If the file is not MEME format, a matrix is malformed, or a column is not a probability
        distribution; the message names the motif.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"MEME file {path} does not exist")
    text = path.read_text()
    if not re.search(r"^MEME version \d", text, flags=re.M):
        raise UserError(f"{path} is not a MEME motif file (no 'MEME version' line)")
    lines = text.splitlines()
    motifs: list[Motif] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line.startswith("MOTIF"):
            i += 1
            continue
        parts = line.split()
        if len(parts) < 2:
            raise UserError(f"{path}: line {i + 1}: MOTIF line without an ID")
        mid, name = parts[1], (parts[2] if len(parts) > 2 else parts[1])
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("letter-probability matrix"):
            if lines[i].strip().startswith("MOTIF"):
                raise UserError(f"{path}: motif {mid!r} has no letter-probability matrix")
            i += 1
        if i >= len(lines):
            raise UserError(f"{path}: motif {mid!r} has no letter-probability matrix")
        m = re.search(r"w=\s*(\d+)", lines[i])
        width = int(m.group(1)) if m else None
        m = re.search(r"nsites=\s*(\S+)", lines[i])
        try:
            nsites = float(m.group(1)) if m else None
        except ValueError:
            raise UserError(f"{path}: motif {mid!r}: malformed nsites= {m.group(1)!r}") from None
        i += 1
        rows: list[list[float]] = []
        while i < len(lines):
            s = lines[i].strip()
            if not s:
                if rows:
                    break
                i += 1
                continue
            if s.startswith(("MOTIF", "URL")) or (width is not None and len(rows) == width):
                break
            try:
                vals = [float(v) for v in s.split()]
            except ValueError:
                raise UserError(f"{path}: motif {mid!r}: line {i + 1} is not a row of numbers: {s!r}") from None
            if len(vals) != 4:
                raise UserError(f"{path}: motif {mid!r}: line {i + 1} has {len(vals)} values, expected 4")
            rows.append(vals)
            i += 1
        if width is not None and len(rows) != width:
            raise UserError(f"{path}: motif {mid!r}: header says w= {width} but {len(rows)} rows follow")
        pwm = validate_pwm(np.array(rows, dtype=np.float64).T.reshape(4, -1), mid)
        motifs.append(Motif(mid, name, pwm, nsites))
    if not motifs:
        raise UserError(f"{path} holds no MOTIF entries")
    return motifs
