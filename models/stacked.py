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
  the (pooled) positions, with a backward pass of its own whose traffic grows linearly with the
  positions (:class:`_Recurrence`);
- on the CPU, where oneDNN's grouped convolution and a step-by-step recurrence of small matmuls are
  slower than K separate convolutions and PyTorch's fused LSTM kernel, the convolution blocks and the
  BiLSTM run per member on views of the stacked weights (:meth:`StackedHybrid.set_batched`; the tests
  run both forms on the CPU);
- the first-layer activation per member (relu and exp members can share a pack);
- dropout per member: every site's masks of a forward drawn at once, one launch per member from the
  member's own generator (:class:`_Dropout`), so a member's stream is its own (reproducible, and
  separable from its pack-mates'), though not the masks a lone model would draw from the global one.

Every operation is member-separable: a member's outputs and gradients depend on its own weights and
inputs only (a member whose weights are NaN leaves the others untouched). :meth:`StackedHybrid.members`
exports each member as a plain ``Hybrid`` state dict and :meth:`StackedHybrid.load_member` imports one;
:meth:`StackedHybrid.slots` says where each member tensor lies in the stacked ones (optimizer state has
the same layout). Built by :func:`stack`, for what :func:`why_not_stackable` accepts.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hybridlens.models.blocks import BN_EPS, BN_MOMENTUM, make_activation
from hybridlens.models.grid import Hybrid

#: slicer(stacked tensor or a tensor shaped like it, member index) -> the member's view; its ``layout``
#: attribute, ``(kind, offset)``, says how the members lie (``rows``, ``index`` or ``index_t``)
Slicer = Callable[[torch.Tensor, int], torch.Tensor]


def _rows(k_members: int) -> Slicer:
    """Members concatenated along dim 0 (channels side by side): member k is rows [k*n, (k+1)*n)."""

    def view(t: torch.Tensor, k: int) -> torch.Tensor:
        n = t.shape[0] // k_members
        return t[k * n : (k + 1) * n]

    view.layout = ("rows", 0)
    return view


def _index(offset: int = 0) -> Slicer:
    """Members stacked along a new dim 0: member k is index ``offset + k``."""

    def view(t: torch.Tensor, k: int) -> torch.Tensor:
        return t[offset + k]

    view.layout = ("index", offset)
    return view


def _index_t(offset: int = 0) -> Slicer:
    """Matrices stacked transposed along a new dim 0 (``(K, in, out)``, which batched matmuls take
    without copies, for members' ``(out, in)``): member k is index ``offset + k``, transposed back."""

    def view(t: torch.Tensor, k: int) -> torch.Tensor:
        return t[offset + k].T

    view.layout = ("index_t", offset)
    return view


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
    """Per-member dropout masks for one training forward, every site's drawn at once.

    A forward's dropout sites are known in advance (:meth:`StackedHybrid.dropout_sites`: each site's
    rate and per-sequence mask shape, in forward order), so :meth:`begin` draws one uniform buffer per
    member, ``(total,)`` from the member's own generator (one launch per member for the whole forward,
    not one per member and site), and turns all of them into masks with two kernels: ``1 / (1 - p)``
    where the draw is below ``1 - p``, else 0 (what ``F.dropout`` multiplies by). :meth:`take` then hands
    out each site's block, ``(K, B, *shape)``. A member's masks depend on its own generator only: its
    stream is reproducible and separable from its pack-mates', though not the one a lone model draws
    (``nn.Dropout`` draws per site, from the global generator). ``keep``: hold every site's masks of the
    latest forward in :attr:`last` (tests give a lone model the same masks).
    """

    def __init__(self, generators: list[torch.Generator] | None):
        self.generators = generators
        self.keep = False
        self.last: list[torch.Tensor] = []
        self._masks: torch.Tensor | None = None
        self._offset = 0
        self._factors: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (B, dtype, device) -> keep, scale

    def _keep_and_scale(self, sites: list[tuple[float, tuple[int, ...]]], b: int, like: torch.Tensor):
        key = (b, like.dtype, like.device)
        if key not in self._factors:
            sizes = [b * math.prod(shape) for _, shape in sites]
            keep = torch.cat([torch.full((n,), 1 - p, dtype=torch.float64) for (p, _), n in zip(sites, sizes)])
            self._factors[key] = (keep.to(like.device, like.dtype), (1 / keep).to(like.device, like.dtype))
        return self._factors[key]

    def begin(self, sites: list[tuple[float, tuple[int, ...]]], b: int, like: torch.Tensor) -> None:
        """Draw every member's masks for a forward of ``b`` sequences per member over ``sites``."""
        keep, scale = self._keep_and_scale(sites, b, like)
        masks = torch.empty((len(self.generators), keep.numel()), dtype=like.dtype, device=like.device)
        for row, g in zip(masks, self.generators):
            row.uniform_(generator=g)
        self._masks = masks.lt_(keep).mul_(scale)
        self._offset = 0
        self.last = []

    def release(self) -> None:
        """Drop the latest forward's masks (an evaluation forward needs none; :attr:`last` stays while
        ``keep``)."""
        self._masks = None
        if not self.keep:
            self.last = []

    def take(self, b: int, shape: tuple[int, ...]) -> torch.Tensor:
        """The next site's masks, ``(K, b, *shape)``."""
        n = b * math.prod(shape)
        out = self._masks[:, self._offset : self._offset + n].view(-1, b, *shape)
        self._offset += n
        if self.keep:
            self.last.append(out)
        return out


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


class _Recurrence(torch.autograd.Function):
    """The LSTM recurrence of ``D`` batched directions, with a backward pass written out.

    ``gates_x`` ``(D, B, T, 4H)``: the input's share of every step's gates (biases included), PyTorch's
    gate order (i, f, g, o); ``w_hh`` ``(D, H, 4H)``: the recurrent weights, transposed. Returns the
    hidden states ``(D, B, T, H)`` (zero initial state).

    Autograd through a Python loop of ``gates_x[:, :, t]`` would write a full-size gradient of
    ``gates_x`` at every step (traffic growing with ``T**2``) and accumulate ``w_hh``'s gradient step by
    step; here every step's state is written into preallocated ``(D, B, T, .)`` buffers, the backward
    writes each step's gate gradients into one such buffer (which is ``gates_x``'s gradient) and
    ``w_hh``'s gradient is one batched matmul over all steps. Per step: 7 kernels forward, 6 backward;
    the factors the backward needs are computed for all steps at once. Each step's matmul runs in
    ``gates_x``'s dtype (under bfloat16 autocast, bfloat16); the gates, cell state and backward run in
    float32 at least (two casts a step under autocast), as a bfloat16 cell state would round away the
    memory an LSTM keeps over the positions.
    """

    @staticmethod
    def forward(ctx, gates_x: torch.Tensor, w_hh: torch.Tensor) -> torch.Tensor:
        d, b, t, four = gates_x.shape
        h_size = four // 4
        state = torch.promote_types(gates_x.dtype, torch.float32)
        ctx.dtypes = gates_x.dtype, w_hh.dtype
        w_mm = w_hh.to(gates_x.dtype)
        acts = gates_x.new_empty(d, b, t, four, dtype=state)  # sigmoid(i, f, o) and tanh(g)
        cells, tanh_c, out = (gates_x.new_empty(d, b, t, h_size, dtype=state) for _ in range(3))
        g_slice = slice(2 * h_size, 3 * h_size)
        h = c = gates_x.new_zeros(d, b, h_size, dtype=state)
        for gx, a, c_out, tc, h_out in zip(*(buf.unbind(2) for buf in (gates_x, acts, cells, tanh_c, out))):
            gates = torch.baddbmm(gx, h.to(gx.dtype), w_mm).to(state)  # both casts are no-ops but under autocast
            torch.sigmoid(gates, out=a)
            torch.tanh(gates[..., g_slice], out=a[..., g_slice])
            i, f, g, o = a.chunk(4, dim=-1)
            torch.addcmul(f * c, i, g, out=c_out)
            torch.tanh(c_out, out=tc)
            torch.mul(o, tc, out=h_out)
            h, c = h_out, c_out
        ctx.save_for_backward(w_hh, acts, cells, tanh_c, out)
        return out if out.dtype == gates_x.dtype else out.to(gates_x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        w_hh, acts, cells, tanh_c, out = ctx.saved_tensors
        d, b, t, h_size = out.shape
        grad_out = grad_out.to(out.dtype)
        i, f, g, o = acts.chunk(4, dim=-1)
        c_prev = torch.cat([cells.new_zeros(d, b, 1, h_size), cells[:, :, :-1]], dim=2)
        # d(gate pre-activations) = dc * in_factors (i, f, g) and dh * o_factor (o); dc gains dh * c_factor
        in_factors = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], dim=3)  # (D, B, T, 3, H)
        o_factor = tanh_c * o * (1 - o)
        c_factor = o * (1 - tanh_c * tanh_c)
        grad_gates = out.new_empty(d, b, t, 4 * h_size)
        w_t = w_hh.to(out.dtype).transpose(1, 2)
        dh = dc = None
        steps = zip(*(x.unbind(2) for x in (grad_out, in_factors, o_factor, c_factor, f, grad_gates)))
        for go, inf, of, cf, fs, gg in reversed(list(steps)):
            dh = go if dh is None else go + dh
            dc = dh * cf if dc is None else torch.addcmul(dc, dh, cf)
            torch.mul(dc.unsqueeze(2), inf, out=gg[..., : 3 * h_size].view(d, b, 3, h_size))
            torch.mul(dh, of, out=gg[..., 3 * h_size :])
            dh = torch.bmm(gg, w_t)
            dc = dc * fs
        h_prev = torch.cat([out.new_zeros(d, b, 1, h_size), out[:, :, :-1]], dim=2)
        grad_w = torch.bmm(h_prev.reshape(d, b * t, h_size).transpose(1, 2), grad_gates.reshape(d, b * t, 4 * h_size))
        gates_dtype, w_dtype = ctx.dtypes
        return grad_gates.to(gates_dtype), grad_w.to(w_dtype)


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
        k = self.k
        both = torch.cat([x, x.flip(2)])  # (2K, B, T, C)
        gates_x = _linear(both, self.weight_ih, self.bias_ih + self.bias_hh)  # (2K, B, T, 4H)
        out = _Recurrence.apply(gates_x, self.weight_hh)  # (2K, B, T, H)
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
        self._sites: list | None = None  # the dropout sites (dropout_sites), traced at the first training forward

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

    def keep_masks(self, keep: bool = True) -> None:
        """Hold each training forward's dropout masks in :attr:`last_masks` (a lone model can then be given
        a member's masks: the tests' proof that a stacked step is the member's own)."""
        self._drop.keep = keep

    @property
    def last_masks(self) -> list[torch.Tensor]:
        """The latest training forward's masks, one ``(K, B, *shape)`` tensor per dropout site in forward
        order (with :meth:`keep_masks`); member ``k``'s, ``[m[k] for m in last_masks]``, are what a lone
        ``Hybrid``'s dropout modules multiply by, call by call."""
        return self._drop.last

    # ------------------------------------------------------------------------------------- forward
    def _dropout(self, x: torch.Tensor, p: float, layout: str) -> torch.Tensor:
        """Each member's masks on ``x`` in ``layout`` ``"conv"`` (``(B, K*C, L)``) or ``"seq"``
        (``(K, B, ...)``); while :meth:`dropout_sites` traces a forward, the site is recorded instead."""
        if self._sites_traced is not None:
            if p > 0:
                shape = (x.shape[1] // self.k, *x.shape[2:]) if layout == "conv" else tuple(x.shape[2:])
                self._sites_traced.append((p, shape))
            return x
        if not self.training or p == 0:
            return x
        if layout == "conv":
            b, kc, length = x.shape
            masks = self._drop.take(b, (kc // self.k, length))  # (K, B, C, L)
            out = (x.view(b, self.k, kc // self.k, length) * masks.transpose(0, 1)).view(b, kc, length)
        else:
            out = x * self._drop.take(x.shape[1], tuple(x.shape[2:]))
        return out.to(x.dtype)  # under autocast the masks keep the weights' dtype

    _sites_traced: list | None = None

    @torch.no_grad()
    def dropout_sites(self, x: torch.Tensor) -> list[tuple[float, tuple[int, ...]]]:
        """The dropout sites of a forward on inputs shaped like ``x`` (``(K, B, 4, L)`` or ``(B, 4, L)``):
        ``(p, per-sequence mask shape)`` in forward order, traced by one evaluation-mode forward of one
        sequence (no statistics move)."""
        one = x[:1] if x.dim() == 3 else x[:, :1]
        training, self._sites_traced = self.training, []
        try:
            self.eval()
            self.forward(one)
            return self._sites_traced
        finally:
            self._sites_traced = None
            self.train(training)

    def _conv_to_seq(self, x: torch.Tensor) -> torch.Tensor:  # (B, K*C, P) -> (K, B, P, C)
        b, kc, p = x.shape
        return x.reshape(b, self.k, kc // self.k, p).permute(1, 0, 3, 2).contiguous()

    def _seq_to_conv(self, x: torch.Tensor) -> torch.Tensor:  # (K, B, P, C) -> (B, K*C, P)
        k, b, p, c = x.shape
        return x.permute(1, 0, 3, 2).reshape(b, k * c, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = x.dim() == 3
        if self.training and self._sites_traced is None:
            if self._sites is None:
                self._sites = self.dropout_sites(x)
            if self._sites:
                self._drop.begin(self._sites, x.shape[0] if shared else x.shape[1], self.head.bn_weight)
        elif not self.training:
            self._drop.release()  # a pack of 32 holds ~160 MB of masks between its training steps
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
                x = self._dropout(x, drop, "seq")
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
    def export(self) -> dict[str, torch.Tensor]:
        """Every member's tensors at once: per member state-dict key, a ``(K, *shape)`` tensor whose
        index k is member k's tensor, contiguous: a view of the stacked tensor where its layout allows
        (side-by-side rows, stacked indices), else one copy for all members (the transposed matrices of
        batched matmuls). A few dozen kernels in all, whatever K, where :meth:`member` takes one per
        member and tensor."""
        out = {}
        for key, t, slicer in self.slots():
            kind, offset = slicer.layout
            t = t.detach()
            if kind == "rows":
                out[key] = t.view(self.k, -1, *t.shape[1:])
            elif kind == "index":
                out[key] = t[offset : offset + self.k]
            else:  # (K, in, out) -> the members' (out, in)
                out[key] = t[offset : offset + self.k].transpose(1, 2).contiguous()
        return out

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
