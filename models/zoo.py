"""The lab's CNNs that the activation and pooling studies used, beside the 17 hybrids.

- ``cnn-pool``: Koo & Eddy (2019)'s CNN (p-koo/learning_sequence_motifs, ``code/models/cnn_<pool>.py``):
  ``conv(filters, 19) -> BN -> activation -> max-pool(first_pool) -> dropout 0.1 -> conv(128, 5) -> BN
  -> relu -> max-pool(100 // first_pool) -> dropout 0.1 -> dense(512) -> BN -> relu -> dropout 0.5 ->
  dense(outputs)``. Its first-layer pool is a setting (``first_pool``, default 4): the two pools
  multiply to 100 as in the released models (cnn_2 pools 2 then 50, cnn_25 25 then 4), so a pool sweep
  changes what the first layer sees and nothing else.
- ``cnn-local`` and ``cnn-dist``: Koo & Ploenzke (2021)'s models (p-koo/exponential_activations,
  ``code/model_zoo/``), with tfomics' ``conv_layer`` (``conv (no bias) -> BN -> activation -> dropout``)
  before each max-pool: ``cnn-local`` = conv(24, 19) drop 0.1, pool 50, conv(48, 3) drop 0.2, pool 2,
  dense(96); ``cnn-dist`` = conv(24, 19) drop 0.1, conv(32, 7) drop 0.2, pool 4, conv(48, 7, valid)
  drop 0.3, pool 4, conv(64, 3, valid) drop 0.4, pool 3 (Keras ``padding='same'``: ceil), dense(96).

The first convolution is a :class:`~hybridlens.models.blocks.ConvBlock` (``first``), so the filter
analysis reads them as it reads a hybrid; dense layers are the hybrids' :class:`DenseHead`
(``dense -> BN -> relu -> dropout 0.5 -> output``). The released code's L2 penalty (1e-6) on kernels is
not reproduced: no model here has one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hybridlens.models.blocks import ConvBlock, DenseHead


@dataclass(frozen=True)
class ZooSpec:
    """One of the lab's CNNs: where it comes from and its own default sizes (over the task's)."""

    source: str
    defaults: tuple[tuple[str, object], ...]


#: The lab's CNNs by name, with the sizes their released code used (outputs and length from the task).
ZOO: dict[str, ZooSpec] = {
    "cnn-pool": ZooSpec("Koo & Eddy 2019", (("filters", 30), ("dense_units", 512), ("first_pool", 4))),
    "cnn-local": ZooSpec("Koo & Ploenzke 2021", (("filters", 24), ("dense_units", 96))),
    "cnn-dist": ZooSpec("Koo & Ploenzke 2021", (("filters", 24), ("dense_units", 96))),
}
#: Koo & Eddy's two pools multiply to this.
TOTAL_POOL = 100


class LabCNN(nn.Module):
    """One of :data:`ZOO`'s CNNs. Input ``(N, 4, L)`` one-hot, output ``(N, T)`` logits; see the module
    docstring for the layers. ``first_layer_activations(x)``: the first layer's post-activation map
    ``(N, filters, L)``, as :class:`~hybridlens.models.grid.Hybrid`'s."""

    def __init__(self, name: str, activation: str, sizes):
        super().__init__()
        self.name, self.activation, self.sizes = name, activation, sizes
        s = sizes
        self.first = ConvBlock(4, s.filters, s.kernel_size, activation)
        length = s.seq_len
        if name == "cnn-pool":
            first_pool = s.first_pool
            if first_pool < 1 or TOTAL_POOL % first_pool:
                raise ValueError(f"cnn-pool's first_pool must divide {TOTAL_POOL} (got {first_pool})")
            second_pool = TOTAL_POOL // first_pool
            self.pools = (first_pool, second_pool)
            self.body = nn.Sequential(
                nn.MaxPool1d(first_pool), nn.Dropout(0.1),
                ConvBlock(s.filters, 128, 5), nn.MaxPool1d(second_pool), nn.Dropout(0.1),
            )  # fmt: skip
            length = length // first_pool // second_pool
            width = 128
        elif name == "cnn-local":
            self.pools = (50, 2)
            self.body = nn.Sequential(
                nn.Dropout(0.1), nn.MaxPool1d(50),
                ConvBlock(s.filters, 48, 3), nn.Dropout(0.2), nn.MaxPool1d(2),
            )  # fmt: skip
            length = length // 50 // 2
            width = 48
        elif name == "cnn-dist":
            self.pools = (4, 4, 3)
            self.body = nn.Sequential(
                nn.Dropout(0.1),
                ConvBlock(s.filters, 32, 7), nn.Dropout(0.2), nn.MaxPool1d(4),
                ConvBlock(32, 48, 7, padding="valid"), nn.Dropout(0.3), nn.MaxPool1d(4),
                ConvBlock(48, 64, 3, padding="valid"), nn.Dropout(0.4), nn.MaxPool1d(3, ceil_mode=True),
            )  # fmt: skip
            length = -(-((length // 4 - 6) // 4 - 2) // 3)
            width = 64
        else:
            raise ValueError(f"unknown lab CNN {name!r}; choose one of {', '.join(ZOO)}")
        if length < 1:
            raise ValueError(f"sequence length {s.seq_len} is too short for {name}'s pooling {self.pools}")
        self.positions = length
        self.head = DenseHead(length * width, s.dense_units, s.num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 4, L)`` -> ``(N, num_outputs)`` logits."""
        return self.head(self.body(self.first(x)).transpose(1, 2))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))

    def first_layer_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Post-activation first-layer feature map ``(N, filters, L)`` (before pooling)."""
        return self.first(x)
