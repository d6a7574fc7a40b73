"""The architecture grid and the builder: ``build(name, task, activation, **overrides)``.

Names (SPEC.md): ``C24``, ``C24-Att``, ``C24-LSTM-Att``, ``C24-LSTM-Trans{1,2,4}``, the same for
``C4C6``, and ``C4`` (conv + BiLSTM), ``C4-Att``, ``C4-Trans{1,2,4}``. Every Stage 1 module yields
``seq_len // 24`` = 8 positions for length 200.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from hybridlens.models.blocks import (
    ACTIVATIONS,
    INITS,
    LN_EPS,
    BiLSTM,
    ConvBlock,
    DenseHead,
    MultiHeadAttention,
    TransformerBlock,
    initialize,
)

BASELINES = ("C24", "C4C6", "C4")


@dataclass(frozen=True)
class ArchSpec:
    """One grid cell's architecture: a Stage 1 baseline and a Stage 2 module."""

    baseline: str  # C24 | C4C6 | C4
    stage2: str  # none | att | lstm-att | trans
    layers: int = 0  # transformer blocks for stage2 == "trans"


def _grid() -> dict[str, ArchSpec]:
    g: dict[str, ArchSpec] = {}
    for b in ("C24", "C4C6"):
        g[b] = ArchSpec(b, "none")
        g[f"{b}-Att"] = ArchSpec(b, "att")
        g[f"{b}-LSTM-Att"] = ArchSpec(b, "lstm-att")
        for n in (1, 2, 4):
            g[f"{b}-LSTM-Trans{n}"] = ArchSpec(b, "trans", n)
    g["C4"] = ArchSpec("C4", "none")
    g["C4-Att"] = ArchSpec("C4", "att")
    for n in (1, 2, 4):
        g[f"C4-Trans{n}"] = ArchSpec("C4", "trans", n)
    return g


#: The 17 architectures of the paper's grid, in the paper's order. The study enumerates this.
GRID: dict[str, ArchSpec] = _grid()


def _architectures() -> tuple[str, ...]:
    from hybridlens.models.zoo import ZOO

    return (*GRID, *ZOO)


#: Every architecture a study may name: the grid's 17 hybrids, then the lab's CNNs (``models.zoo``).
ARCHITECTURES: tuple[str, ...] = _architectures()


def family(name: str) -> str:
    """The group an architecture is shown in: a hybrid's Stage 1 baseline (C24, C4C6, C4), else ``lab CNNs``."""
    return GRID[name].baseline if name in GRID else "lab CNNs"


@dataclass(frozen=True)
class Sizes:
    """Layer sizes; the per-task defaults are method.md §1.5 with SPEC's decisions."""

    filters: int
    lstm_units: int  # both directions together (units per direction = lstm_units // 2)
    key_size: int  # attention d_model; BiLSTMs feeding a transformer use key_size // 2 per direction
    dense_units: int
    num_outputs: int
    heads: int = 8
    ffn_units: int = 32
    kernel_size: int = 19
    seq_len: int = 200
    init: str = "he"
    first_pool: int | None = None  # cnn-pool only (models.zoo): its first-layer max-pool size


#: One source of size defaults (SPEC: Task 2's attention size is 48 everywhere).
TASK_SIZES: dict[str, Sizes] = {
    "task1": Sizes(filters=32, lstm_units=128, key_size=128, dense_units=512, num_outputs=12),
    "task2": Sizes(filters=24, lstm_units=48, key_size=48, dense_units=96, num_outputs=1),
}
TASKS = tuple(TASK_SIZES)


def _choices(kind: str, value, valid) -> ValueError:
    return ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(map(str, valid))}")


class Hybrid(nn.Module):
    """A Stage 1 + Stage 2 + Stage 3 hybrid. Input ``(N, 4, L)`` one-hot, output ``(N, T)`` logits.

    Use :meth:`probabilities` (sigmoid of the logits) for predictions. The first layer's
    post-activation feature map is the module named ``stage1.first.conv_activation``
    (:meth:`first_layer_activations`); :meth:`attention_weights` returns every attention module's
    weights for a batch.
    """

    def __init__(self, name: str, spec: ArchSpec, activation: str, sizes: Sizes):
        super().__init__()
        self.name, self.spec, self.activation, self.sizes = name, spec, activation, sizes
        s = sizes
        self.stage1 = nn.Module()
        self.stage1.first = ConvBlock(4, s.filters, s.kernel_size, activation)
        self.drop = nn.Dropout(0.1)
        if spec.baseline == "C24":
            self.pools = (24,)
            width = s.filters
        elif spec.baseline == "C4C6":
            self.pools = (4, 6)
            self.stage1.second = ConvBlock(s.filters, s.filters, 7, "relu")
            width = s.filters
        else:  # C4: conv -> pool 4 -> BiLSTM -> pool 6
            self.pools = (4, 6)
            units = (s.key_size if spec.stage2 == "trans" else s.lstm_units) // 2
            self.stage1.lstm = BiLSTM(s.filters, units)
            width = 2 * units
        # modules, not F.max_pool1d: attribution rules (DeepLIFT's max-pool rule) hook modules
        self.pool_layers = nn.ModuleList(nn.MaxPool1d(p) for p in self.pools)
        positions = s.seq_len
        for p in self.pools:
            positions //= p
        if positions < 1:
            raise ValueError(f"sequence length {s.seq_len} is too short for pooling {self.pools}")
        self.positions = positions

        stage2: list[nn.Module] = []
        if spec.stage2 in ("lstm-att", "trans") and spec.baseline != "C4":
            units = (s.lstm_units if spec.stage2 == "lstm-att" else s.key_size) // 2
            stage2 += [BiLSTM(width, units), nn.Dropout(0.1)]
            width = 2 * units
        if spec.stage2 in ("att", "lstm-att"):
            stage2 += [MultiHeadAttention(width, s.key_size, s.heads), nn.Dropout(0.1)]
            width = s.key_size
        elif spec.stage2 == "trans":
            if width != s.key_size:
                raise ValueError(f"transformer input width {width} differs from key_size {s.key_size}")
            stage2.append(nn.LayerNorm(width, eps=LN_EPS))
            stage2 += [TransformerBlock(width, s.heads, s.ffn_units) for _ in range(spec.layers)]
        self.stage2 = nn.Sequential(*stage2)
        self.stage3 = DenseHead(positions * width, s.dense_units, s.num_outputs)

    def _pool(self, x: torch.Tensor, i: int) -> torch.Tensor:  # (N, C, L)
        return self.drop(self.pool_layers[i](x))

    def _stage1(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pool(self.stage1.first(x), 0)
        if self.spec.baseline == "C4C6":
            x = self._pool(self.stage1.second(x), 1)
        elif self.spec.baseline == "C4":
            x = self._pool(self.stage1.lstm(x.transpose(1, 2)).transpose(1, 2), 1)
        return x.transpose(1, 2)  # (N, positions, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 4, L)`` -> ``(N, num_outputs)`` logits."""
        return self.stage3(self.stage2(self._stage1(x)))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the logits: per-label probabilities ``(N, num_outputs)``."""
        return torch.sigmoid(self(x))

    def first_layer_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Post-activation first-layer feature map ``(N, filters, L)`` (before pooling)."""
        return self.stage1.first(x)

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights ``(N, heads, P, P)`` of every attention module, in forward order."""
        mods = [m for m in self.modules() if isinstance(m, MultiHeadAttention)]
        for m in mods:
            m.keep_weights = True
        try:
            self(x)
            return [m.last_weights for m in mods]
        finally:
            for m in mods:
                m.keep_weights, m.last_weights = False, None


def resolve_sizes(task: str, architecture: str | None = None, **overrides) -> Sizes:
    """The task's default sizes, then ``architecture``'s own (a lab CNN's, :data:`models.zoo.ZOO`), with
    ``overrides`` applied; unknown keys, and ``first_pool`` for another model than ``cnn-pool``, are
    rejected."""
    from hybridlens.models.zoo import ZOO

    if task not in TASK_SIZES:
        raise _choices("task", task, TASKS)
    valid = {f.name for f in fields(Sizes)}
    bad = sorted(set(overrides) - valid)
    if bad:
        raise ValueError(f"unknown size override {bad[0]!r}; choose from {', '.join(sorted(valid))}")
    own = dict(ZOO[architecture].defaults) if architecture in ZOO else {}
    if overrides.get("first_pool") is not None and "first_pool" not in own:
        raise ValueError(f"first_pool applies to cnn-pool only, not {architecture or 'the hybrids'}")
    sizes = replace(TASK_SIZES[task], **{**own, **{k: v for k, v in overrides.items() if v is not None or k not in own}})
    if sizes.init not in INITS:
        raise _choices("init", sizes.init, INITS)
    for k, v in asdict(sizes).items():
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError(f"size {k} must be a positive integer, got {v}")
    return sizes


def build(name: str, task: str, activation: str = "exp", *, seed: int | None = None, **overrides) -> nn.Module:
    """Build architecture ``name`` for ``task`` with first-layer ``activation``.

    Parameters
    ----------
    name
        A key of :data:`ARCHITECTURES`: a grid hybrid (:data:`GRID`, e.g. ``"C4C6-LSTM-Trans2"``) or one of
        the lab's CNNs (:data:`models.zoo.ZOO`, e.g. ``"cnn-pool"``).
    task
        ``"task1"`` or ``"task2"``: picks the default sizes (:data:`TASK_SIZES`).
    activation
        First-layer activation, one of :data:`~hybridlens.models.blocks.ACTIVATIONS` (``"exp"``,
        ``"relu"``, ...); deeper layers are ReLU.
    seed
        Seeds the weight initialisation (same seed, same initial weights); ``None`` uses torch's
        global generator.
    **overrides
        Any field of :class:`Sizes` (``filters``, ``key_size``, ``init="glorot"``, ...).
    """
    from hybridlens.models.zoo import ZOO, LabCNN

    if name not in ARCHITECTURES:
        raise _choices("architecture", name, ARCHITECTURES)
    if activation not in ACTIVATIONS:
        raise _choices("activation", activation, ACTIVATIONS)
    sizes = resolve_sizes(task, name, **overrides)
    model = LabCNN(name, activation, sizes) if name in ZOO else Hybrid(name, GRID[name], activation, sizes)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return initialize(model, sizes.init, gen)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@functools.lru_cache(maxsize=1024)
def size_matters(name: str, task: str, key: str, values: tuple) -> bool:
    """Whether architecture ``name`` (``task``'s sizes) is a different model for the ``values`` of size
    ``key`` (``filters``, ``lstm_units``, ``key_size``, ``dense_units``: each changes the shape of some
    parameter of a model that has it): the models built with each value, on the meta device (no memory,
    no initialisation), differ in a parameter's shape. A size the architecture does not have
    (``lstm_units`` for C24) leaves them alike. A value the architecture cannot take (a build that
    fails) counts as mattering: the config says why elsewhere."""
    from hybridlens.models.zoo import ZOO, LabCNN

    seen = set()
    for value in values:
        try:
            sizes = resolve_sizes(task, name, **{key: value})
            with torch.device("meta"):
                model = LabCNN(name, "relu", sizes) if name in ZOO else Hybrid(name, GRID[name], "relu", sizes)
        except ValueError:
            return True
        seen.add(tuple((k, tuple(t.shape)) for k, t in model.state_dict().items()))
    return len(seen) > 1
