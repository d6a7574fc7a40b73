"""First-layer filters as motifs: activation-based alignment and clipping (method.md §4.1, steps 1–3).

1. For filter ``f``, every (sequence, position) whose post-activation value exceeds
   ``threshold * max`` (the max over all sequences and positions) contributes the one-hot window of
   ``window`` nucleotides centred on it, if the window lies strictly inside the sequence; the PPM is
   the mean of those windows (uniform if none).
2. Clipping keeps the span of positions with information > 0.5 bits, padded by 3.
"""

from __future__ import annotations

import numpy as np
import torch

from hybridlens.analysis.motifs import Motif, information_content

#: A filter aligned from fewer windows than this is marked on its logo: its PPM is a handful of
#: sequences, not a motif estimate.
MIN_WINDOWS = 10


@torch.no_grad()
def first_layer_activations(model: torch.nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 500) -> np.ndarray:
    """Post-activation first-layer feature maps ``(N, F, L)`` in eval mode.

    ``model`` must provide ``first_layer_activations(x)`` (every :class:`models.Hybrid` does).
    """
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(x, dtype=torch.float32)
    out = [model.first_layer_activations(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def align_filters(
    fmap: np.ndarray, x: np.ndarray, *, window: int = 20, threshold: float = 0.5, return_counts: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Activation-based PPMs of every filter.

    Parameters
    ----------
    fmap : numpy.ndarray
        ``(N, F, L)`` post-activation feature maps.
    x : numpy.ndarray
        ``(N, 4, L)`` one-hot sequences the maps were computed on.
    window : int
        Window width (even); position ``p`` contributes ``x[n, :, p - window/2 : p + window/2]`` when
        ``p - window/2 > 0`` and ``p + window/2 < L`` (the reference's strict test).
    threshold : float
        Fraction of the filter's maximum activation a position must exceed.
    return_counts : bool
        Also return the number of windows each PPM averages.

    Returns
    -------
    numpy.ndarray
        ``(F, 4, window)`` PPMs; a filter with no qualifying window gets uniform 0.25. With
        ``return_counts``, also ``(F,)`` window counts.
    """
    n, f, length = fmap.shape
    if x.shape != (n, 4, length):
        raise ValueError(f"sequences have shape {x.shape}; expected {(n, 4, length)} to match the feature maps")
    half = window // 2
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(x, dtype=np.float64), window, axis=2)  # (N,4,L-w+1,w)
    ppms = np.full((f, 4, window), 0.25)
    counts = np.zeros(f, dtype=np.int64)
    for k in range(f):
        fm = fmap[:, k, :]
        seq, pos = np.nonzero(fm > threshold * fm.max())
        keep = (pos - half > 0) & (pos + half < length)
        seq, pos = seq[keep], pos[keep]
        counts[k] = seq.size
        if seq.size:
            ppms[k] = windows[seq, :, pos - half, :].mean(axis=0)
    return (ppms, counts) if return_counts else ppms


def clip_filters(ppms: np.ndarray, *, threshold: float = 0.5, pad: int = 3) -> list[np.ndarray]:
    """Trim each ``(4, W)`` PPM to the positions with information > ``threshold`` bits, padded by
    ``pad`` on both sides; a PPM without such a position is kept whole.

    Uses the reference's information ``2 + sum p log2(p + 1e-7)``. (The reference also kept the
    whole PPM when the only informative position was 0, a bug this fixes.)
    """
    out = []
    for ppm in ppms:
        info = information_content(ppm, eps=1e-7)
        idx = np.flatnonzero(info > threshold)
        if idx.size == 0:
            out.append(ppm.copy())
            continue
        start = max(int(idx.min()) - pad, 0)
        end = min(int(idx.max()) + pad + 1, ppm.shape[1])
        out.append(ppm[:, start:end].copy())
    return out


def filter_motifs(model: torch.nn.Module, x: np.ndarray, *, window: int = 20, threshold: float = 0.5) -> list[Motif]:
    """Aligned and clipped PPMs of every first-layer filter as motifs named ``filter0``, ``filter1``, ...,
    each with ``nsites`` = the number of windows it was aligned from (written to MEME files)."""
    ppms, counts = align_filters(first_layer_activations(model, x), x, window=window, threshold=threshold, return_counts=True)
    return [Motif(f"filter{i}", f"filter{i}", p, int(n)) for i, (p, n) in enumerate(zip(clip_filters(ppms), counts))]
