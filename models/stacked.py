"""K hybrids of one architecture as one module whose every kernel computes all K (SPEC.md "Throughput").

The models are launch-bound: a batch-100 step of C4C6-LSTM-Trans4 is a few hundred tiny kernels, each
using a few of a GPU's multiprocessors. Stacked, the members' weights sit side by side in one tensor
per layer, so each kernel does the work of K members and a pack costs about the launches of one model:

- convolutions and BatchNorm: the members' channels side by side, ``(B, K*C, L)``; a grouped
  convolution (``groups=K``), one BatchNorm over ``K*C`` channels (per-member statistics, since
  BatchNorm's are per channel); max-pooling as it is;
- dense, attention and transformer weights: ``(K, out, in)`` batched matmuls on ``(K, B, P, C)``;
  LayerNorm with per-member scale and shift; attention through one ``scaled_dot_product_attention`` over
  ``K*B`` sequences;
- the BiLSTM as batched matmuls, both directions of all members as ``2K`` batched recurrences over
  the (pooled) positions;
- on the CPU, where oneDNN's grouped convolution and a step-by-step recurrence of small matmuls are
  slower than K separate convolutions and PyTorch's fused LSTM kernel, the convolution blocks and the
  BiLSTM run per member on views of the stacked weights (:meth:`StackedHybrid.set_batched`; the tests
  run both forms on the CPU);
- the first-layer activation per member (relu and exp members can share a pack);
- dropout per member, each member's masks drawn from its own generator with the shapes and in the order
  a lone :class:`~hybridlens.models.grid.Hybrid` draws them, so on the CPU a member's masks are the ones
  it would draw alone.

Every operation is member-separable: a member's outputs and gradients depend on its own weights and
inputs only (a member whose weights are NaN leaves the others untouched). :meth:`StackedHybrid.members`
exports each member as a plain ``Hybrid`` state dict and :meth:`StackedHybrid.load_member` imports one;
:meth:`StackedHybrid.slots` says where each member tensor lies in the stacked ones (optimizer state has
the same layout). Built by :func:`stack`, for what :func:`why_not_stackable` accepts.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hybridlens.models.blocks import BN_EPS, BN_MOMENTUM, make_activation
from hybridlens.models.grid import Hybrid

#: slicer(stacked tensor or a tensor shaped like it, member index) -> the member's view
Slicer = Callable[[torch.Tensor, int], torch.Tensor]


def _rows(k_members: int) -> Slicer:
    """Members concatenated along dim 0 (channels side by side): member k is rows [k*n, (k+1)*n)."""

    def view(t: torch.Tensor, k: int) -> torch.Tensor:
        n = t.shape[0] // k_members
        return t[k * n : (k + 1) * n]

    return view


def _index(offset: int = 0) -> Slicer:
    """Members stacked along a new dim 0: member k is index ``offset + k``."""
    return lambda t, k: t[offset + k]


def _index_t(offset: int = 0) -> Slicer:
    """Matrices stacked transposed along a new dim 0 (``(K, in, out)``, which batched matmuls take
    without copies, for members' ``(out, in)``): member k is index ``offset + k``, transposed back."""
    return lambda t, k: t[offset + k].T


class _Stacked(nn.Module):
    """A stacked layer: ``slots`` lists (member key, stacked tensor name, slicer). ``batched`` (set by
    :meth:`StackedHybrid.set_batched`): whether the layers that have a per-member form on the CPU (the
    convolution blocks and the BiLSTM) run batched there too (None: batched on a GPU only)."""

    batched: bool | None = None

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self._slots: list[tuple[str, str, Slicer]] = []

    def _batched(self, x: torch.Tensor) -> bool:
        return self.batched if self.batched is not None else x.device.type != "cpu"

    def _add(self, name: str, member_key: str, tensors: list[torch.Tensor], how: str, *, buffer: bool = False, offset=0):
        if how == "rows":
            stacked, slicer = torch.cat([t.detach() for t in tensors]), _rows(self.k)
        elif how == "index_t":
            stacked, slicer = torch.stack([t.detach().T for t in tensors]), _index_t(offset)
        else:
            stacked, slicer = torch.stack([t.detach() for t in tensors]), _index(offset)
        stacked = stacked.clone().contiguous()
        if buffer:
            self.register_buffer(name, stacked)
        else:
            self.register_parameter(name, nn.Parameter(stacked))
        self._slots.append((member_key, name, slicer))

    def slots(self, prefix: str) -> list[tuple[str, torch.Tensor, Slicer]]:
        out = [(f"{prefix}{key}", getattr(self, name), slicer) for key, name, slicer in self._slots]
        for child_name, child in self.named_children():
            if isinstance(child, _Stacked):
                out += child.slots(f"{prefix}{child._member_name or child_name}.")
        return out

    _member_name: str | None = None  # the member module's name, where it differs from the attribute


class _Dropout:
    """Per-member dropout: for each member, ``bernoulli_(1 - p)`` of the member's own shape from its
    own generator, divided by ``1 - p`` (what ``F.dropout`` does on the CPU), stacked."""

    def __init__(self, generators: list[torch.Generator] | None):
        self.generators = generators

    def noise(self, p: float, shape: tuple[int, ...], like: torch.Tensor, *, time_major: bool = False) -> torch.Tensor:
        """The members' masks ``(K, *shape)``, member k's drawn from its generator into its own contiguous
        block; ``time_major``: each laid out in memory as a batch-first LSTM's output is, ``(T, B, C)``
        (``F.dropout`` fills ``empty_like`` of its input in memory order)."""
        drawn = (shape[1], shape[0], *shape[2:]) if time_major else shape
        out = torch.empty((len(self.generators), *drawn), dtype=like.dtype, device=like.device)
        for k, g in enumerate(self.generators):
            out[k].bernoulli_(1 - p, generator=g)
        out.div_(1 - p)
        return out.transpose(1, 2) if time_major else out


class StackedConvBlock(_Stacked):
    """``ConvBlock`` x K on ``(B, K*C_in, L)`` (or a shared ``(B, C_in, L)``): grouped convolution, one
    BatchNorm over the members' channels, each member's activation."""

    def __init__(self, blocks: list, activations: list[str]):
        super().__init__(len(blocks))
        conv = blocks[0].conv
        self.kernel, self.in_channels, self.filters = conv.kernel_size[0], conv.in_channels, conv.out_channels
        self._add("conv_weight", "conv.weight", [b.conv.weight for b in blocks], "rows")
        self._add("bn_weight", "bn.weight", [b.bn.weight for b in blocks], "rows")
        self._add("bn_bias", "bn.bias", [b.bn.bias for b in blocks], "rows")
        self._add("bn_mean", "bn.running_mean", [b.bn.running_mean for b in blocks], "rows", buffer=True)
        self._add("bn_var", "bn.running_var", [b.bn.running_var for b in blocks], "rows", buffer=True)
        self._add("bn_count", "bn.num_batches_tracked", [b.bn.num_batches_tracked for b in blocks], "index", buffer=True)
        self.activations = activations
        # runs of members with one activation: (activation, first channel, end channel)
        self.runs: list[tuple[nn.Module, int, int]] = []
        for k, a in enumerate(activations):
            if self.runs and activations[k - 1] == a:
                act, start, _ = self.runs[-1]
                self.runs[-1] = (act, start, (k + 1) * self.filters)
            else:
                self.runs.append((make_activation(a), k * self.filters, (k + 1) * self.filters))

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        if self.training:
            self.bn_count.add_(1)
        if not self._batched(x):
            return self._per_member(x, shared)
        x = F.conv1d(x, self.conv_weight, None, padding="same", groups=1 if shared else self.k)
        x = F.batch_norm(x, self.bn_mean, self.bn_var, self.bn_weight, self.bn_bias, self.training, BN_MOMENTUM, BN_EPS)
        if len(self.runs) == 1:
            return self.runs[0][0](x)
        # each run of members its own activation, on its channels (a pack lists its members by activation)
        return torch.cat([act(x[:, start:end]) for act, start, end in self.runs], dim=1)

    def _per_member(self, x: torch.Tensor, shared: bool) -> torch.Tensor:
        """The same block as K convolutions on the members' own channels: on the CPU, oneDNN's grouped
        convolution takes about twice as long as K separate ones (and a BatchNorm over all the members'
        channels longer than K over their own)."""
        c, f = self.in_channels, self.filters
        acts = [act for act, start, end in self.runs for _ in range(start // f, end // f)]
        out = []
        for k in range(self.k):
            rows = slice(k * f, (k + 1) * f)
            xk = x if shared else x[:, k * c : (k + 1) * c]
            y = F.conv1d(xk, self.conv_weight[rows], None, padding="same")
            y = F.batch_norm(y, self.bn_mean[rows], self.bn_var[rows], self.bn_weight[rows], self.bn_bias[rows],
                             self.training, BN_MOMENTUM, BN_EPS)  # fmt: skip
            out.append(acts[k](y))
        return torch.cat(out, dim=1)


def _linear(x: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Per-member ``x @ w_t + b``: ``x`` ``(K, ..., in)``, ``w_t`` ``(K, in, out)`` (the members' weights
    transposed), ``b`` ``(K, out)``."""
    shape = x.shape
    x2 = x.reshape(shape[0], -1, shape[-1])
    y = torch.bmm(x2, w_t) if b is None else torch.baddbmm(b.unsqueeze(1), x2, w_t)
    return y.reshape(*shape[:-1], w_t.shape[2])


class StackedLinear(_Stacked):
    def __init__(self, linears: list[nn.Linear]):
        super().__init__(len(linears))
        self._add("weight", "weight", [m.weight for m in linears], "index_t")
        self.has_bias = linears[0].bias is not None
        if self.has_bias:
            self._add("bias", "bias", [m.bias for m in linears], "index")

    def forward(self, x):
        return _linear(x, self.weight, self.bias if self.has_bias else None)


class StackedLayerNorm(_Stacked):
    def __init__(self, norms: list[nn.LayerNorm]):
        super().__init__(len(norms))
        self.eps = norms[0].eps
        self._add("weight", "weight", [m.weight for m in norms], "index")
        self._add("bias", "bias", [m.bias for m in norms], "index")

    def forward(self, x):  # (K, B, P, C)
        view = (self.k,) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return F.layer_norm(x, x.shape[-1:], None, None, self.eps) * self.weight.view(view) + self.bias.view(view)


class StackedBiLSTM(_Stacked):
    """``BiLSTM`` x K on ``(K, B, T, C)``: the 2K directions as one batched recurrence (the backward ones
    on time-reversed inputs), PyTorch's gate order (i, f, g, o) and its two biases."""

    def __init__(self, blocks: list):
        super().__init__(len(blocks))
        lstms = [b.lstm for b in blocks]
        self._member_name = "lstm"
        self.hidden = lstms[0].hidden_size
        k = self.k
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            tensors = [getattr(m, f"{name}_l0") for m in lstms] + [getattr(m, f"{name}_l0_reverse") for m in lstms]
            matrix = name.startswith("weight")  # stored transposed, (2K, in, 4H), as batched matmuls take them
            stacked = torch.stack([t.detach().T if matrix else t.detach() for t in tensors]).contiguous()
            self.register_parameter(name, nn.Parameter(stacked))
            self._slots.append((f"{name}_l0", name, _index_t(0) if matrix else _index(0)))
            self._slots.append((f"{name}_l0_reverse", name, _index_t(k) if matrix else _index(k)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (K, B, T, C) -> (K, B, T, 2H)
        if not self._batched(x):
            return self._per_member(x)
        k, b, t, _ = x.shape
        h_size = self.hidden
        both = torch.cat([x, x.flip(2)])  # (2K, B, T, C)
        gates_x = _linear(both, self.weight_ih, self.bias_ih + self.bias_hh)  # (2K, B, T, 4H)
        h = x.new_zeros(2 * k, b, h_size)
        c = x.new_zeros(2 * k, b, h_size)
        w_hh = self.weight_hh  # (2K, H, 4H)
        outs = []
        for step in range(t):
            gates = torch.baddbmm(gates_x[:, :, step], h, w_hh)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        out = torch.stack(outs, dim=2)  # (2K, B, T, H)
        return torch.cat([out[:k], out[k:].flip(2)], dim=-1)

    def _per_member(self, x: torch.Tensor) -> torch.Tensor:
        """Each member through PyTorch's own LSTM kernel, on views of its weights (on the CPU, where a
        recurrence of small batched matmuls, step by step, is several times slower than the fused kernel)."""
        k, h = self.k, self.hidden
        zeros = x.new_zeros(2, x.shape[1], h)
        outs = []
        for m in range(k):
            weights = [self.weight_ih[m].T, self.weight_hh[m].T, self.bias_ih[m], self.bias_hh[m],
                       self.weight_ih[k + m].T, self.weight_hh[k + m].T, self.bias_ih[k + m], self.bias_hh[k + m]]  # fmt: skip
            outs.append(torch._VF.lstm(x[m], (zeros, zeros), weights, True, 1, 0.0, self.training, True, True)[0])
        return torch.stack(outs)


class StackedAttention(_Stacked):
    """``MultiHeadAttention`` x K on ``(K, B, P, C)``; one ``scaled_dot_product_attention`` over K*B."""

    def __init__(self, blocks: list):
        super().__init__(len(blocks))
        self.heads, self.depth = blocks[0].heads, blocks[0].depth
        for name in ("wq", "wk", "wv", "out"):
            setattr(self, name, StackedLinear([getattr(m, name) for m in blocks]))

    def forward(self, x):
        k, b, p, _ = x.shape

        def split(t):  # (K, B, P, d) -> (K*B, H, P, depth)
            return t.reshape(k * b, p, self.heads, self.depth).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(split(self.wq(x)), split(self.wk(x)), split(self.wv(x)))
        return self.out(ctx.transpose(1, 2).reshape(k, b, p, self.heads * self.depth))


class StackedTransformer(_Stacked):
    def __init__(self, blocks: list):
        super().__init__(len(blocks))
        self.attention = StackedAttention([m.attention for m in blocks])
        self.norm1 = StackedLayerNorm([m.norm1 for m in blocks])
        self.ffn1 = StackedLinear([m.ffn[0] for m in blocks])
        self.ffn1._member_name = "ffn.0"
        self.ffn2 = StackedLinear([m.ffn[3] for m in blocks])
        self.ffn2._member_name = "ffn.3"
        self.norm2 = StackedLayerNorm([m.norm2 for m in blocks])
        self.p = blocks[0].drop1.p

    def forward(self, x, drop):
        x = self.norm1(x + drop(self.attention(x), self.p))
        return self.norm2(x + drop(self.ffn2(drop(torch.relu(self.ffn1(x)), self.p)), self.p))


class StackedDenseHead(_Stacked):
    def __init__(self, heads: list):
        super().__init__(len(heads))
        self.dense = StackedLinear([h.dense for h in heads])
        self._add("bn_weight", "bn.weight", [h.bn.weight for h in heads], "rows")
        self._add("bn_bias", "bn.bias", [h.bn.bias for h in heads], "rows")
        self._add("bn_mean", "bn.running_mean", [h.bn.running_mean for h in heads], "rows", buffer=True)
        self._add("bn_var", "bn.running_var", [h.bn.running_var for h in heads], "rows", buffer=True)
        self._add("bn_count", "bn.num_batches_tracked", [h.bn.num_batches_tracked for h in heads], "index", buffer=True)
        self.output = StackedLinear([h.output for h in heads])
        self.p = heads[0].drop.p

    def forward(self, x, drop):  # (K, B, P, C) -> (K, B, T)
        k, b = x.shape[:2]
        h = self.dense(x.reshape(k, b, -1))  # position-major flatten, as the lone model's
        if self.training:
            self.bn_count.add_(1)
        h = F.batch_norm(h.transpose(0, 1).reshape(b, -1), self.bn_mean, self.bn_var, self.bn_weight, self.bn_bias,
                         self.training, BN_MOMENTUM, BN_EPS)  # fmt: skip
        h = torch.relu(h.reshape(b, k, -1).transpose(0, 1))
        return self.output(drop(h, self.p))


def why_not_stackable(models: list[nn.Module]) -> str | None:
    """Why these models cannot be one :class:`StackedHybrid` (None when they can): every one a grid
    ``Hybrid`` of one architecture and the same sizes."""
    first = models[0]
    if not all(isinstance(m, Hybrid) for m in models):
        return f"{type(first).__name__} has no stacked form (only the grid's hybrids have)"
    if any(m.name != first.name or m.sizes.__dict__ | {"init": None} != first.sizes.__dict__ | {"init": None} for m in models):
        return "the members differ in architecture or sizes"
    return None


class StackedHybrid(nn.Module):
    """K ``Hybrid`` models of one architecture as one module; see the module docstring.

    ``forward(x)``: ``x`` ``(K, B, 4, L)`` (each member its own batch) or ``(B, 4, L)`` (one batch for
    all, as in evaluation) -> logits ``(K, B, T)``. In training mode, dropout draws each member's masks
    from ``generators[k]`` (:meth:`set_generators`).
    """

    def __init__(self, models: list[Hybrid]):
        super().__init__()
        reason = why_not_stackable(models)
        if reason:
            raise ValueError(reason)
        first = models[0]
        self.k, self.name, self.spec, self.pools = len(models), first.name, first.spec, first.pools
        self.activations = [m.activation for m in models]
        self.first = StackedConvBlock([m.stage1.first for m in models], self.activations)
        self.first._member_name = "stage1.first"
        if first.spec.baseline == "C4C6":
            self.second = StackedConvBlock([m.stage1.second for m in models], ["relu"] * self.k)
            self.second._member_name = "stage1.second"
        elif first.spec.baseline == "C4":
            self.lstm1 = StackedBiLSTM([m.stage1.lstm for m in models])
            self.lstm1._member_name = "stage1.lstm.lstm"
        self.p1 = first.drop.p
        self.stage2 = nn.ModuleList()
        self.stage2_plan: list[tuple[str, float]] = []  # (kind, dropout after it)
        mods = [list(m.stage2) for m in models]
        i = 0
        while i < len(mods[0]):
            layer = mods[0][i]
            name = type(layer).__name__
            drop = mods[0][i + 1].p if i + 1 < len(mods[0]) and isinstance(mods[0][i + 1], nn.Dropout) else None
            group = [m[i] for m in mods]
            stacked = {"BiLSTM": StackedBiLSTM, "MultiHeadAttention": StackedAttention, "LayerNorm": StackedLayerNorm,
                       "TransformerBlock": StackedTransformer}[name](group)  # fmt: skip
            stacked._member_name = f"stage2.{i}" + (".lstm" if name == "BiLSTM" else "")
            self.stage2.append(stacked)
            self.stage2_plan.append((name, drop))
            i += 2 if drop is not None else 1
        self.head = StackedDenseHead([m.stage3 for m in models])
        self.head._member_name = "stage3"
        self._drop = _Dropout(None)

    def set_batched(self, batched: bool | None) -> "StackedHybrid":
        """Run the convolution blocks and BiLSTMs batched (True), per member (False), or batched on a GPU
        and per member on the CPU (None, the default: on the CPU the batched forms are slower)."""
        for m in self.modules():
            if isinstance(m, _Stacked):
                m.batched = batched
        return self

    def set_generators(self, generators: list[torch.Generator]) -> None:
        """Each member's dropout stream (one generator per member, on the module's device)."""
        if len(generators) != self.k:
            raise ValueError(f"{len(generators)} generators for {self.k} members")
        self._drop = _Dropout(list(generators))

    # ------------------------------------------------------------------------------------- forward
    def _dropout(self, x: torch.Tensor, p: float, layout: str) -> torch.Tensor:
        """Member masks for ``x`` in ``layout`` ``"conv"`` (``(B, K*C, L)``), ``"seq"`` (``(K, B, ...)``)
        or ``"lstm"`` (``"seq"`` after a BiLSTM, whose masks a lone model draws time-major)."""
        if not self.training or p == 0:
            return x
        if layout == "conv":
            b, kc, length = x.shape
            noise = self._drop.noise(p, (b, kc // self.k, length), x)  # (K, B, C, L)
            return (x.view(b, self.k, kc // self.k, length) * noise.transpose(0, 1)).view(b, kc, length)
        return x * self._drop.noise(p, tuple(x.shape[1:]), x, time_major=layout == "lstm")

    def _conv_to_seq(self, x: torch.Tensor) -> torch.Tensor:  # (B, K*C, P) -> (K, B, P, C)
        b, kc, p = x.shape
        return x.reshape(b, self.k, kc // self.k, p).permute(1, 0, 3, 2).contiguous()

    def _seq_to_conv(self, x: torch.Tensor) -> torch.Tensor:  # (K, B, P, C) -> (B, K*C, P)
        k, b, p, c = x.shape
        return x.permute(1, 0, 3, 2).reshape(b, k * c, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = x.dim() == 3
        if not shared:  # (K, B, 4, L) -> (B, K*4, L)
            k, b, c, length = x.shape
            x = x.transpose(0, 1).reshape(b, k * c, length)
        x = self._dropout(F.max_pool1d(self.first(x, shared=shared), self.pools[0]), self.p1, "conv")
        if self.spec.baseline == "C4C6":
            x = self._dropout(F.max_pool1d(self.second(x), self.pools[1]), self.p1, "conv")
        elif self.spec.baseline == "C4":
            x = self._seq_to_conv(self.lstm1(self._conv_to_seq(x)))
            x = self._dropout(F.max_pool1d(x, self.pools[1]), self.p1, "conv")
        x = self._conv_to_seq(x)
        for layer, (kind, drop) in zip(self.stage2, self.stage2_plan):
            if kind == "TransformerBlock":
                x = layer(x, lambda t, p: self._dropout(t, p, "seq"))
            else:
                x = layer(x)
            if drop is not None:
                x = self._dropout(x, drop, "lstm" if kind == "BiLSTM" else "seq")
        return self.head(x, lambda t, p: self._dropout(t, p, "seq"))

    # ------------------------------------------------------------------------------- members' state
    def slots(self) -> list[tuple[str, torch.Tensor, Slicer]]:
        """``(member state-dict key, stacked tensor, slicer)`` for every member tensor, in no set order."""
        out = []
        for name, child in self.named_children():
            if isinstance(child, _Stacked):
                out += child.slots(f"{child._member_name}.")
            elif isinstance(child, nn.ModuleList):
                for c in child:
                    out += c.slots(f"{c._member_name}.")
        return out

    def member(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s ``Hybrid`` state dict (contiguous copies)."""
        return {key: slicer(t.detach(), k).clone(memory_format=torch.contiguous_format) for key, t, slicer in self.slots()}

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, torch.Tensor]) -> None:
        """Write a ``Hybrid`` state dict into member ``k``'s slots."""
        slots = self.slots()
        missing = {key for key, _, _ in slots} ^ set(state)
        if missing:
            raise KeyError(f"member state and stacked slots differ in {sorted(missing)[:5]}")
        for key, t, slicer in slots:
            slicer(t, k).copy_(state[key])


def stack(models: list[Hybrid], generators: list[torch.Generator] | None = None, batched: bool | None = None) -> StackedHybrid:
    """:class:`StackedHybrid` of ``models`` (their current weights, on their device), in ``models``' train/eval
    mode; ``batched``: :meth:`StackedHybrid.set_batched`."""
    s = StackedHybrid(models).to(next(models[0].parameters()).device).set_batched(batched)
    if generators is not None:
        s.set_generators(generators)
    return s.train(models[0].training)


__all__ = ["StackedHybrid", "stack", "why_not_stackable"]
