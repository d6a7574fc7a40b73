"""Blocks against independent implementations."""

import torch

from hybridlens.models.blocks import BiLSTM, MultiHeadAttention, TransformerBlock


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 16, heads=4)
    ref = torch.nn.MultiheadAttention(16, 4, bias=True, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.wq.weight, ours.wk.weight, ours.wv.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.wq.bias, ours.wk.bias, ours.wv.bias]))
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 8, 16)
    out, w = ours(x, return_weights=True)
    ref_out, ref_w = ref(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-6)


def test_attention_projects_to_d_model():
    att = MultiHeadAttention(32, 128, heads=8)
    assert att(torch.randn(2, 8, 32)).shape == (2, 8, 128)


def test_transformer_block_is_post_ln():
    torch.manual_seed(0)
    blk = TransformerBlock(16, heads=4, ffn_units=32).eval()
    x = torch.randn(2, 8, 16)
    h = blk.norm1(x + blk.attention(x))
    expected = blk.norm2(h + blk.ffn[3](torch.relu(blk.ffn[0](h))))
    torch.testing.assert_close(blk(x), expected)
    assert blk.ffn[0].out_features == 32  # the reference's hard-coded FFN width
    assert blk.norm1.eps == 1e-6


def test_bilstm_concatenates_directions_in_forward_time():
    torch.manual_seed(0)
    m = BiLSTM(4, 3)
    x = torch.randn(2, 5, 4)
    out = m(x)
    assert out.shape == (2, 5, 6)
    # The backward half at position t only depends on inputs t..end: changing x[:, 0] leaves
    # the backward half of positions 1.. unchanged.
    x2 = x.clone()
    x2[:, 0] += 1.0
    out2 = m(x2)
    torch.testing.assert_close(out[:, 1:, 3:], out2[:, 1:, 3:])
    assert not torch.allclose(out[:, 1:, :3], out2[:, 1:, :3])


def test_glorot_lstm_init_is_keras_whole_kernels():
    """``init: glorot`` as Keras: the input kernel (input, 4u) Glorot-uniform as one matrix (limit
    sqrt(6 / (input + 4u))), the recurrent kernel (u, 4u) one orthogonal matrix (its u rows
    orthonormal; per-gate orthogonal blocks would give W^T W = 4 I instead of I)."""
    import math

    from hybridlens.models.blocks import initialize

    lstm = torch.nn.LSTM(24, 16, batch_first=True, bidirectional=True)
    initialize(lstm, "glorot", torch.Generator().manual_seed(0))
    for suffix in ("", "_reverse"):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l0{suffix}"), getattr(lstm, f"weight_hh_l0{suffix}")
        limit = math.sqrt(6 / (24 + 64))  # per gate it would be sqrt(6 / (24 + 16)): 1.48x wider
        assert w_ih.abs().max() <= limit and w_ih.abs().max() > 0.95 * limit
        assert abs(w_ih.std().item() - limit / math.sqrt(3)) < 0.05 * limit  # a uniform's std: limit / sqrt(3)
        torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(16), atol=1e-5, rtol=0)
    he = torch.nn.LSTM(24, 16, batch_first=True)
    initialize(he, "he", torch.Generator().manual_seed(0))
    for gate in he.weight_hh_l0.chunk(4):  # the He scheme keeps an orthogonal matrix per gate
        torch.testing.assert_close(gate.T @ gate, torch.eye(16), atol=1e-5, rtol=0)


def test_first_layer_activations_by_hand():
    """Each activation at a few points, computed by hand from the released code's definitions
    (tfomics' utils.activation_fn; Keras' built-ins for the others)."""
    import math

    import pytest

    from hybridlens.models.blocks import ACTIVATIONS, make_activation

    x = [-2.0, 0.0, 0.5, 3.0]
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected = {
        "relu": [0, 0, 0.5, 3],
        "exp": [math.exp(v) for v in x],
        "sigmoid": [sig(v) for v in x],
        "tanh": [math.tanh(v) for v in x],
        "softplus": [math.log(1 + math.exp(v)) for v in x],
        "linear": x,
        "elu": [math.exp(-2) - 1, 0, 0.5, 3],
        "shift_scale_relu": [0, 0, 0.3**3, 2.8**3],  # relu((x - 0.2)^3): (-2.2)^3 and (-0.2)^3 are negative
        "shift_scale_tanh": [500 * math.tanh(v - 6) + 500 for v in x],
        "shift_scale_sigmoid": [4000 * sig(v - 8) for v in x],
        "exp_relu": [0, 0, math.exp(0.05) - 1, math.exp(0.3) - 1],  # relu(exp(0.1 x) - 1)
    }
    assert set(expected) == set(ACTIVATIONS) and len(ACTIVATIONS) == 11
    t = torch.tensor(x, dtype=torch.float64)
    for name, want in expected.items():
        got = make_activation(name)(t).tolist()
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), name
    with pytest.raises(ValueError, match="unknown activation 'swish'; choose one of relu, exp, sigmoid"):
        make_activation("swish")
