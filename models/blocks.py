"""Building blocks of the hybrids (method.md §1).

Tensor layouts: convolutional blocks take and return ``(N, C, L)`` (length last, as the one-hot input
``(N, 4, L)``); sequence blocks (BiLSTM, attention, transformer) take and return ``(N, L, C)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Keras BatchNormalization defaults: momentum 0.99 (PyTorch's momentum is 1 - Keras'), epsilon 1e-3.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3
#: Keras LayerNormalization epsilon used by the reference transformer.
LN_EPS = 1e-6
#: First-layer activations: the paper's relu and exp, and the others Koo & Ploenzke (2021) compared,
#: defined as their released code (p-koo/exponential_activations, ``code/tfomics/utils.py``) does.
ACTIVATIONS = (
    "relu",
    "exp",
    "sigmoid",
    "tanh",
    "softplus",
    "linear",
    "elu",
    "shift_scale_relu",
    "shift_scale_tanh",
    "shift_scale_sigmoid",
    "exp_relu",
)


class Exp(nn.Module):
    """Exponential activation, ``exp(x)`` with no scaling (Keras' ``'exponential'``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)


class ShiftScaleReLU(nn.Module):
    """``relu((x - 0.2)^3)`` (``shift_scale_relu``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - 0.2) ** 3)


class ShiftScaleTanh(nn.Module):
    """``500 tanh(x - 6) + 500`` (``shift_scale_tanh``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x - 6.0) * 500 + 500


class ShiftScaleSigmoid(nn.Module):
    """``4000 sigmoid(x - 8)`` (``shift_scale_sigmoid``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x - 8.0) * 4000


class ExpReLU(nn.Module):
    """``relu(exp(0.1 x) - 1)`` (``exp_relu``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(torch.exp(0.1 * x) - 1)


#: Our own element-wise activation modules (attribution rules that work per module, as DeepLIFT's,
#: must be told about them; PyTorch's own are known).
CUSTOM_ACTIVATIONS = (Exp, ShiftScaleReLU, ShiftScaleTanh, ShiftScaleSigmoid, ExpReLU)

_MODULES = {
    "relu": nn.ReLU,
    "exp": Exp,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,  # log(1 + exp(x)), as Keras' (beta 1; PyTorch's linear above x = 20 agrees to float32)
    "linear": nn.Identity,
    "elu": nn.ELU,  # alpha 1, as Keras'
    "shift_scale_relu": ShiftScaleReLU,
    "shift_scale_tanh": ShiftScaleTanh,
    "shift_scale_sigmoid": ShiftScaleSigmoid,
    "exp_relu": ExpReLU,
}


def make_activation(name: str) -> nn.Module:
    """The module of first-layer activation ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in _MODULES:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return _MODULES[name]()


class ConvBlock(nn.Module):
    """``Conv1d(k, padding 'same' or 'valid', no bias) -> BatchNorm -> activation``; pooling and dropout
    are the caller's.

    The activation module is named ``conv_activation`` (as the reference's Keras layer), so a forward
    hook on it reads the post-activation feature map ``(N, filters, L)``.
    """

    def __init__(self, in_channels: int, filters: int, kernel_size: int, activation: str = "relu", padding: str = "same"):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, filters, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm1d(filters, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.conv_activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_activation(self.bn(self.conv(x)))


class BiLSTM(nn.Module):
    """Bidirectional LSTM, ``units`` per direction, outputs concatenated: ``(N, L, C) -> (N, L, 2*units)``.

    Both directions use PyTorch's tanh cell (SPEC: the reference's ReLU backward cell is a known
    difference). ``nn.LSTM`` has two bias vectors per gate set where Keras has one: ``+4*units``
    trainable parameters per direction.
    """

    def __init__(self, in_features: int, units: int):
        super().__init__()
        self.lstm = nn.LSTM(in_features, units, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0]


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention as tfomics' May-2021 layer: q/k/v projections ``in -> d_model`` with
    bias, ``softmax(QK^T / sqrt(depth)) V`` per head, heads concatenated, output projection with bias.
    No mask, no attention dropout, no positional encoding.

    ``(N, L, in_features) -> (N, L, d_model)``. With ``keep_weights = True`` the last forward's
    attention weights ``(N, heads, L, L)`` are kept in ``last_weights``.
    """

    def __init__(self, in_features: int, d_model: int, heads: int = 8):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"attention size {d_model} is not divisible by {heads} heads")
        self.heads, self.depth = heads, d_model // heads
        self.wq = nn.Linear(in_features, d_model)
        self.wk = nn.Linear(in_features, d_model)
        self.wv = nn.Linear(in_features, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        n, length, _ = t.shape
        return t.view(n, length, self.heads, self.depth).transpose(1, 2)  # (N, H, L, depth)

    def forward(self, x: torch.Tensor, return_weights: bool = False):
        q, k, v = self._split(self.wq(x)), self._split(self.wk(x)), self._split(self.wv(x))
        if return_weights or self.keep_weights:
            w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.depth), dim=-1)
            ctx = w @ v
            if self.keep_weights:
                self.last_weights = w.detach()
        else:
            w = None
            ctx = F.scaled_dot_product_attention(q, k, v)
        n, _, length, _ = ctx.shape
        out = self.out(ctx.transpose(1, 2).reshape(n, length, self.heads * self.depth))
        return (out, w) if return_weights else out


class TransformerBlock(nn.Module):
    """Post-LN transformer block of the reference (method.md §1.3)::

    x = LN(x + Dropout(MHA(x)));  x = LN(x + Dropout(Dense(d)(Dropout(ReLU(Dense(ffn)(x))))))
    """

    def __init__(self, d_model: int, heads: int = 8, ffn_units: int = 32, dropout: float = 0.1):
        super().__init__()
        self.attention = MultiHeadAttention(d_model, d_model, heads)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=LN_EPS)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_units), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_units, d_model), nn.Dropout(dropout)
        )
        self.norm2 = nn.LayerNorm(d_model, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.attention(x)))
        return self.norm2(x + self.ffn(x))


class DenseHead(nn.Module):
    """Stage 3: ``Flatten -> Linear(no bias) -> BatchNorm -> ReLU -> Dropout(0.5) -> Linear``.

    ``(N, L, C) -> (N, num_outputs)`` logits. Flattening is position-major, as Keras' ``Flatten``
    of ``(L, C)``.
    """

    def __init__(self, in_features: int, dense_units: int, num_outputs: int, dropout: float = 0.5):
        super().__init__()
        self.dense = nn.Linear(in_features, dense_units, bias=False)
        self.bn = nn.BatchNorm1d(dense_units, momentum=BN_MOMENTUM, eps=BN_EPS)
        self.act = nn.ReLU()  # a module, not torch.relu: attribution rules (DeepLIFT) hook modules
        self.drop = nn.Dropout(dropout)
        self.output = nn.Linear(dense_units, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.drop(self.act(self.bn(self.dense(x.flatten(1))))))


INITS = ("he", "glorot")


@torch.no_grad()
def initialize(model: nn.Module, scheme: str = "he", generator: torch.Generator | None = None) -> nn.Module:
    """Initialise weights in place.

    ``"he"``: Kaiming-normal (fan-in, ReLU gain) for convolution, dense, attention and LSTM input
    weights, as the paper says, and an orthogonal recurrent matrix per LSTM gate. ``"glorot"``: Keras'
    defaults, as the released code: Glorot-uniform for convolution, dense and attention weights, and for
    an LSTM the whole input kernel ``(input, 4u)`` Glorot-uniform (limit ``sqrt(6 / (input + 4u))``, not
    per gate) and the whole recurrent kernel ``(u, 4u)`` one orthogonal matrix. PyTorch stores both
    transposed, ``(4u, input)`` and ``(4u, u)``, which leaves the fans and the orthogonality as they are.
    Both: LSTM forget-gate bias 1 (Keras' ``unit_forget_bias``; PyTorch's second bias vector is zero),
    other biases 0, normalisation layers at 1 and 0.
    """
    if scheme not in INITS:
        raise ValueError(f"unknown init {scheme!r}; choose one of {', '.join(INITS)}")

    def fill(w: torch.Tensor) -> None:
        if scheme == "he":
            nn.init.kaiming_normal_(w, nonlinearity="relu", generator=generator)
        else:
            nn.init.xavier_uniform_(w, generator=generator)

    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            fill(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LSTM):
            # Keras initialises whole kernels; the He scheme initialises gate by gate
            per_gate = 4 if scheme == "he" else 1
            for name, p in m.named_parameters():
                if name.startswith("weight_ih"):
                    for gate in p.chunk(per_gate, dim=0):
                        fill(gate)
                elif name.startswith("weight_hh"):
                    for gate in p.chunk(per_gate, dim=0):
                        nn.init.orthogonal_(gate, generator=generator)
                elif name.startswith("bias"):
                    nn.init.zeros_(p)
                    if name.startswith("bias_ih"):
                        p[m.hidden_size : 2 * m.hidden_size] = 1.0  # PyTorch gate order: i, f, g, o
        elif isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
