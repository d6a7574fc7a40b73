"""Attribution methods with one signature, ``method(model, x, target) -> (N, 4, L)`` scores (SPEC.md
"Attribution methods"), and which of them an architecture supports.

Every method attributes the **logit** of output ``target`` (the field's usual target: the probability's
gradient is the logit's times ``s(1 - s)``: at most 1.2e-7 of it once ``|logit| > 16``, and exactly 0
in float32 for a logit above about 16.6, where every position scores alike). The paper's Task 2 saliency of the probability
stays in :mod:`~hybridlens.analysis.saliency` (``saliency_*`` metrics), for comparison with the
published table.

- ``saliency``: grad x input of the logit.
- ``saliency_corrected``: Majdandzic, Rajesh & Koo (2023): the gradient's component orthogonal to the
  one-hot simplex is removed (at each position, the mean gradient over the 4 nucleotides is
  subtracted) before multiplying by the input.
- ``smoothgrad`` / ``smoothgrad_corrected``: the logit's gradient averaged over ``samples`` copies of the
  input with Gaussian noise of standard deviation ``noise`` (the one-hot range is 1), times the input;
  the second with the gradient correction.
- ``integrated_gradients`` / ``integrated_gradients_shuffle``: captum's, from a baseline of uniform 0.25,
  or (the second) from dinucleotide-shuffled copies of each sequence (tangermeme's shuffle), averaged
  over ``shuffles`` of them, 10 by default (a single shuffle leaves
  exact zeros wherever it keeps the observed base: about a quarter of the positions). No corrected
  variant: IG multiplies the averaged gradient by ``x - baseline``, whose 4 entries sum to 0 at every
  position for both baselines, so the summed per-position score a scorer reads cannot change when a
  constant is subtracted from the 4 gradients.
- ``deep_lift_shap``: tangermeme's DeepLIFT/SHAP against dinucleotide-shuffled references. Its rules
  are defined per module (ReLU, our ``Exp``, max-pooling, ...); there is none for an LSTM or for
  attention's softmax over positions, so architectures with either are *not supported*
  (:func:`unsupported_reason`) rather than attributed wrongly.
- ``ism``: tangermeme's saturation mutagenesis: for each position, the change of the logit for each
  substitution, centred over the 4 nucleotides, at the observed base.

The gradient methods run with cuDNN off (it refuses the backward pass through an LSTM in eval mode).
Everything runs on the model's device, in batches. :func:`logit_gradients` is the one gradient pass
that saliency, corrected saliency and the paper's probability saliency share.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # torch loads when a method runs, so the CLI can name the defaults without it
    import torch

#: Every method, in the order tables and figures list them.
METHODS = (
    "saliency",
    "saliency_corrected",
    "smoothgrad",
    "smoothgrad_corrected",
    "integrated_gradients",
    "integrated_gradients_shuffle",
    "deep_lift_shap",
    "ism",
)
#: The study's default: the paper's saliency and its correction (cheap enough for the quick study).
DEFAULT_METHODS = ("saliency", "saliency_corrected")
#: Methods computed from the logit's gradient alone (one gradient pass serves all of them).
GRADIENT_METHODS = ("saliency", "saliency_corrected")
#: Test sequences attributed per run and method (Task 2), or per class (Task 1), by default: with 50
#: the default analysis of the quick study took 164 s against 89 s without attributions (2-core CPU,
#: under load; 335 s with 200).
MAX_SEQUENCES = 50


class NotSupported(ValueError):
    """The method cannot attribute this architecture; the message says why."""


def unsupported_reason(method: str, model: torch.nn.Module) -> str | None:
    """Why ``method`` cannot attribute ``model``, or None when it can."""
    import torch

    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    if method == "deep_lift_shap":
        from hybridlens.models.blocks import MultiHeadAttention, TransformerBlock

        kinds = {type(m) for m in model.modules()}
        missing = []
        if torch.nn.LSTM in kinds:
            missing.append("the BiLSTM")
        if kinds & {MultiHeadAttention, TransformerBlock, torch.nn.MultiheadAttention}:
            missing.append("attention (a softmax over positions)")
        if missing:
            return f"no DeepLIFT rule for {' or '.join(missing)} in tangermeme"
    return None


def _as_tensor(model: torch.nn.Module, x) -> tuple[torch.Tensor, torch.device]:
    import torch

    device = next(model.parameters()).device
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32), device


def logit_gradients(model, x, target: int = 0, *, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """d logit[:, target] / d x ``(N, 4, L)`` and the logits ``(N,)``, on the CPU (eval mode, cuDNN off)."""
    import torch

    model.eval()
    x, device = _as_tensor(model, x)
    grads, logits = [], []
    with torch.backends.cudnn.flags(enabled=False):
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device).requires_grad_(True)
            y = model(xb)[:, target]
            (grad,) = torch.autograd.grad(y.sum(), xb)
            grads.append(grad.detach().cpu())
            logits.append(y.detach().cpu())
    return torch.cat(grads), torch.cat(logits)


def times_input(gradients, x, *, corrected: bool = False) -> np.ndarray:
    """``gradients * x`` ``(N, 4, L)``; ``corrected`` first subtracts each position's mean gradient over
    the 4 nucleotides (Majdandzic et al. 2023)."""
    import torch

    g = torch.as_tensor(gradients)
    if corrected:
        g = g - g.mean(dim=1, keepdim=True)
    return (g * torch.as_tensor(np.asarray(x), dtype=g.dtype)).numpy()


def saliency(model, x, target: int = 0, *, batch_size: int = 128) -> np.ndarray:
    """Grad x input of the logit ``model(x)[:, target]``: ``(N, 4, L)``."""
    return times_input(logit_gradients(model, x, target, batch_size=batch_size)[0], x)


def saliency_corrected(model, x, target: int = 0, *, batch_size: int = 128) -> np.ndarray:
    """Saliency with the gradient correction: ``(g - mean_over_nucleotides(g)) * x``, ``(N, 4, L)``."""
    return times_input(logit_gradients(model, x, target, batch_size=batch_size)[0], x, corrected=True)


def smoothgrad(
    model,
    x,
    target: int = 0,
    *,
    noise: float = 0.1,
    samples: int = 20,
    seed: int = 0,
    corrected: bool = False,
    batch_size: int = 128,
) -> np.ndarray:
    """SmoothGrad x input: the logit's gradient averaged over ``samples`` noisy copies
    (``x + N(0, noise^2)``), times the input (after the gradient correction when ``corrected``); ``(N, 4, L)``."""
    import torch

    xt, _ = _as_tensor(model, x)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros_like(xt)
    for _ in range(samples):
        noisy = xt + noise * torch.randn(xt.shape, generator=gen)
        total += logit_gradients(model, noisy, target, batch_size=batch_size)[0]
    return times_input(total / samples, xt, corrected=corrected)


def smoothgrad_corrected(model, x, target: int = 0, **kwargs) -> np.ndarray:
    """:func:`smoothgrad` with the gradient correction."""
    return smoothgrad(model, x, target, corrected=True, **kwargs)


def integrated_gradients(
    model,
    x,
    target: int = 0,
    *,
    baseline: str = "uniform",
    steps: int = 32,
    shuffles: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """Integrated gradients of the logit (captum), from ``baseline`` ``"uniform"`` (0.25 everywhere) or
    ``"shuffle"`` (the mean over ``shuffles`` dinucleotide shuffles of each sequence); ``(N, 4, L)``."""
    import torch
    from captum.attr import IntegratedGradients

    model.eval()
    x, device = _as_tensor(model, x)
    if baseline == "uniform":
        bases = [torch.full_like(x, 0.25)]
    elif baseline == "shuffle":
        from tangermeme.ersatz import dinucleotide_shuffle

        shuffled = dinucleotide_shuffle(x, n=shuffles, random_state=seed).float()  # (N, shuffles, 4, L)
        bases = [shuffled[:, k] for k in range(shuffles)]
    else:
        raise ValueError(f"unknown baseline {baseline!r}; choose uniform or shuffle")
    ig = IntegratedGradients(model)
    total = torch.zeros_like(x)
    with torch.backends.cudnn.flags(enabled=False):
        for base in bases:
            for i in range(0, len(x), batch_size):
                xb, bb = x[i : i + batch_size].to(device), base[i : i + batch_size].to(device)
                total[i : i + batch_size] += ig.attribute(xb, baselines=bb, target=target, n_steps=steps).detach().cpu()
    return (total / len(bases)).numpy()


def integrated_gradients_shuffle(model, x, target: int = 0, **kwargs) -> np.ndarray:
    """:func:`integrated_gradients` from dinucleotide-shuffled baselines (the mean over ``shuffles``)."""
    return integrated_gradients(model, x, target, baseline="shuffle", **kwargs)


def deep_lift_shap(model, x, target: int = 0, *, n_shuffles: int = 20, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """tangermeme's DeepLIFT/SHAP of the logit against ``n_shuffles`` dinucleotide shuffles; ``(N, 4, L)``.
    Raises :class:`NotSupported` for architectures with a BiLSTM or attention."""

    from tangermeme.deep_lift_shap import _nonlinear
    from tangermeme.deep_lift_shap import deep_lift_shap as dls

    from hybridlens.models.blocks import CUSTOM_ACTIVATIONS

    reason = unsupported_reason("deep_lift_shap", model)
    if reason:
        raise NotSupported(reason)
    model.eval()
    x, device = _as_tensor(model, x)
    attr = dls(
        model,
        x,
        target=target,
        n_shuffles=n_shuffles,
        random_state=seed,
        batch_size=batch_size,
        # our element-wise activations (exp, ...): the generic rule (delta out / delta in)
        additional_nonlinear_ops=dict.fromkeys(CUSTOM_ACTIVATIONS, _nonlinear),
        device=device,
        warning_threshold=1e-3,
        only_warn=True,
    )
    return attr.detach().cpu().numpy()


def ism(model, x, target: int = 0, *, batch_size: int = 128) -> np.ndarray:
    """tangermeme's saturation mutagenesis of the logit, centred over the 4 nucleotides at each
    position, at the observed base; ``(N, 4, L)``."""
    import torch
    from tangermeme.saturation_mutagenesis import saturation_mutagenesis

    model.eval()
    x, device = _as_tensor(model, x)
    with torch.backends.cudnn.flags(enabled=False):
        attr = saturation_mutagenesis(model, x, target=target, batch_size=batch_size, device=device, fast=False)
    return attr.detach().cpu().numpy()


_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    "saliency": saliency,
    "saliency_corrected": saliency_corrected,
    "smoothgrad": smoothgrad,
    "smoothgrad_corrected": smoothgrad_corrected,
    "integrated_gradients": integrated_gradients,
    "integrated_gradients_shuffle": integrated_gradients_shuffle,
    "deep_lift_shap": deep_lift_shap,
    "ism": ism,
}


def attribute(method: str, model: torch.nn.Module, x, target: int = 0, **kwargs) -> np.ndarray:
    """Scores ``(N, 4, L)`` of ``method`` for output ``target`` of ``model`` on one-hot ``x`` ``(N, 4, L)``.

    Raises
    ------
    NotSupported
        When the method has no rules for a part of the architecture (:func:`unsupported_reason`).
    """
    reason = unsupported_reason(method, model)
    if reason:
        raise NotSupported(reason)
    return _FUNCTIONS[method](model, x, target, **kwargs)


def parse_methods(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"saliency,ism"`` (or a list) -> the methods, checked; ``"none"`` or an empty list -> none at
    all; one line naming the choices otherwise (an empty string too: it is more likely a mistake)."""
    from hybridlens.analysis.errors import UserError

    if isinstance(text, str):
        if text.strip().lower() == "none":
            return ()
        if not any(m.strip() for m in text.split(",")):  # "," or ", ,": a mistake more likely than a wish for none
            raise UserError(f"no attribution method given; name some ({', '.join(METHODS)}) or none")
        text = text.split(",")
    names = [m.strip() for m in text if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise UserError(f"unknown attribution method {bad[0]!r}; choose from {', '.join(METHODS)}, or none")
    return tuple(dict.fromkeys(names))
