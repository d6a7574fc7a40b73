"""The lab's CNNs: layers and parameter counts by hand, pools, and what the analysis reads from them."""

import pytest
import torch

from hybridlens.models import build, count_parameters
from hybridlens.models.zoo import ZOO


def test_zoo_names():
    assert list(ZOO) == ["cnn-pool", "cnn-local", "cnn-dist"]


@pytest.mark.parametrize(
    "name, task, expected",
    [
        # cnn-pool, Task 1 (12 outputs, L 200, pools multiply to 100: 2 positions): conv 4*19*30 + BN 2*30;
        # conv 30*5*128 + BN 2*128; dense (2*128)*512 (no bias) + BN 2*512; output 512*12 + 12
        ("cnn-pool", "task1", 4 * 19 * 30 + 60 + 30 * 5 * 128 + 256 + 256 * 512 + 1024 + 512 * 12 + 12),
        # cnn-local, Task 2: conv 4*19*24 + BN 48; pool 50 -> 4; conv 24*3*48 + BN 96; pool 2 -> 2 positions;
        # dense (2*48)*96 + BN 192; output 96 + 1
        ("cnn-local", "task2", 4 * 19 * 24 + 48 + 24 * 3 * 48 + 96 + 96 * 96 + 192 + 97),
        # cnn-dist, Task 2: 200 -> conv 32 (same) -> pool 4: 50 -> conv 48 (7, valid): 44 -> pool 4: 11 ->
        # conv 64 (3, valid): 9 -> pool 3 (same): 3 positions
        (
            "cnn-dist",
            "task2",
            4 * 19 * 24 + 48 + 24 * 7 * 32 + 64 + 32 * 7 * 48 + 96 + 48 * 3 * 64 + 128 + (3 * 64) * 96 + 192 + 97,
        ),  # fmt: skip
    ],
)
def test_parameter_counts_by_hand(name, task, expected):
    model = build(name, task, "relu", seed=0)
    assert count_parameters(model) == expected
    assert model(torch.randn(5, 4, 200)).shape == (5, 12 if task == "task1" else 1)


@pytest.mark.parametrize("first_pool, second, positions", [(1, 100, 2), (4, 25, 2), (25, 4, 2), (50, 2, 2), (100, 1, 2)])
def test_the_pools_of_cnn_pool(first_pool, second, positions):
    """The released models' pools multiply to 100 (cnn_2: 2 then 50; cnn_25: 25 then 4); the first is the
    setting. The parameter count is the same for every pool: only what the first layer sees changes."""
    model = build("cnn-pool", "task1", "exp", seed=0, first_pool=first_pool)
    assert model.pools == (first_pool, second) and model.positions == positions
    assert count_parameters(model) == count_parameters(build("cnn-pool", "task1", "exp", seed=0))


def test_a_first_pool_that_does_not_divide_100_is_refused():
    """Pools that do not multiply to 100 (3 then 33) are none of the released models', and their
    parameter count differs with the pool (60 then 1 sees 3 positions): refused, in the model and in a
    study config (one line; review finding L3 of #23)."""
    from hybridlens.study.config import axis_value_problem

    with pytest.raises(ValueError, match="first_pool must divide 100 \\(got 3\\)"):
        build("cnn-pool", "task1", "exp", first_pool=3)
    assert "must divide 100" in axis_value_problem("model.first_pool", 60)
    assert axis_value_problem("model.first_pool", 20) is None


def test_first_pool_is_cnn_pools_alone():
    with pytest.raises(ValueError, match="first_pool applies to cnn-pool only, not C24"):
        build("C24", "task1", "exp", first_pool=4)
    with pytest.raises(ValueError, match="first_pool applies to cnn-pool only, not cnn-local"):
        build("cnn-local", "task2", "exp", first_pool=4)


def test_first_layer_maps_and_seeded_init():
    """The filter analysis reads the first layer's map ``(N, filters, L)``, as for a hybrid; the same
    seed builds the same weights."""
    a, b = build("cnn-local", "task2", "shift_scale_tanh", seed=3), build("cnn-local", "task2", "shift_scale_tanh", seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (2, 200)), 4).transpose(1, 2).float()
    assert a.first_layer_activations(x).shape == (2, 24, 200)
    assert (a.eval().first_layer_activations(x) >= 0).all()  # 500 tanh(.) + 500 is never negative
