"""TomTom speed on the reference set: 300 filter-like queries x 1,964 JASPAR 2020 targets.

    python benchmarks/tomtom_speed.py [--cold] [--reference ../shared/reference/tomtom]

Runs on one core (BLAS limited to one thread; the compiled loops are single-threaded). Prints the
first call (compilation, or loading compiled code from numba's on-disk cache) and the best of three
warm calls; ``--cold`` points numba at an empty cache folder so the first call compiles. MEME Suite
takes about 330 s for the same comparison (its documentation's 1.1 s per query on this database).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(Path(__file__).resolve().parents[2] / "shared" / "reference" / "tomtom"))
    ap.add_argument("--cold", action="store_true", help="compile from scratch (empty numba cache)")
    args = ap.parse_args()
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")
    ref = Path(args.reference)
    if not (ref / "queries.meme").is_file():
        sys.exit(f"reference set not found at {ref}; pass --reference")
    from threadpoolctl import threadpool_limits

    from hybridlens.analysis.motifs import read_meme
    from hybridlens.analysis.tomtom import tomtom

    queries = read_meme(ref / "queries.meme")
    targets = read_meme(ref / "targets_jaspar2020_core_all_versions.meme")
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        tomtom(queries, targets)
        first = time.perf_counter() - t0
        warm = []
        for _ in range(3):
            t0 = time.perf_counter()
            tomtom(queries, targets)
            warm.append(time.perf_counter() - t0)
    n = len(queries)
    print(f"{n} queries x {len(targets)} targets, one core")
    print(f"first call: {first:.2f} s ({'compiled' if args.cold else 'numba cache'})")
    print(f"warm:       {min(warm):.2f} s ({1000 * min(warm) / n:.1f} ms per query)")
    print(f"MEME Suite (about 1.1 s per query): ~{1.1 * n:.0f} s, ratio {1.1 * n / min(warm):.0f}x")


if __name__ == "__main__":
    main()
