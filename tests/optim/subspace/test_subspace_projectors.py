"""Projector core: orthonormal bases, the randomized range finder against exact SVD, seeded reproducibility,
row selections, and Haar perfect reconstruction."""

import pytest
import torch

from hf_effi.optim.subspace import (
    exact_svd_basis,
    gaussian_projection,
    haar_forward,
    haar_inverse,
    oriented,
    random_rows,
    randomized_range_finder,
    refresh_offset,
    stable_seed,
    top_norm_rows,
)


def low_rank_plus_noise(s=40, l_dim=70, rank=6, noise=1e-3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.randn(s, rank, generator=gen), torch.randn(rank, l_dim, generator=gen)
    return a @ b + noise * torch.randn(s, l_dim, generator=gen)


@pytest.mark.parametrize("rank", [1, 6, 13])
def test_bases_are_orthonormal(rank):
    g = low_rank_plus_noise()
    for basis in (
        exact_svd_basis(g, rank),
        randomized_range_finder(g, rank, generator=torch.Generator().manual_seed(1)),
    ):
        assert basis.shape == (40, rank)
        torch.testing.assert_close(basis.t() @ basis, torch.eye(rank), atol=1e-5, rtol=0)


def test_randomized_range_finder_finds_the_top_singular_subspace():
    g = low_rank_plus_noise(rank=6)
    exact = exact_svd_basis(g, 6)
    approx = randomized_range_finder(g, 6, generator=torch.Generator().manual_seed(3), power_iterations=2)
    # Same subspace: the projectors P Pᵀ agree (bases may differ by a rotation/sign).
    torch.testing.assert_close(approx @ approx.t(), exact @ exact.t(), atol=1e-4, rtol=0)
    # And it captures the energy of the top-6 part as well as the SVD does.
    captured = torch.linalg.norm(approx.t() @ g) / torch.linalg.norm(exact.t() @ g)
    assert captured.item() == pytest.approx(1.0, abs=1e-6)


def test_randomized_range_finder_is_seeded_and_leaves_global_rng_alone():
    g = low_rank_plus_noise()
    before = torch.random.get_rng_state()
    a = randomized_range_finder(g, 5, generator=torch.Generator().manual_seed(7))
    b = randomized_range_finder(g, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert torch.equal(before, torch.random.get_rng_state())


def test_gaussian_projection_is_a_pure_function_of_its_seed():
    a, b, c = gaussian_projection(4, 300, 11), gaussian_projection(4, 300, 11), gaussian_projection(4, 300, 12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    big = gaussian_projection(16, 4000, 5)
    assert big.var().item() == pytest.approx(1 / 16, rel=0.05)  # N(0, 1/r)
    assert abs(big.mean().item()) < 0.01


def test_stable_seed_and_offsets_depend_only_on_name_and_count():
    assert stable_seed("model.layers.0.mlp.up_proj.weight", 3) == stable_seed("model.layers.0.mlp.up_proj.weight", 3)
    assert stable_seed("a", 0) != stable_seed("a", 1) != stable_seed("b", 1)
    assert stable_seed("a", 0, base_seed=1) != stable_seed("a", 0)
    offsets = {refresh_offset(f"model.layers.{i}.self_attn.q_proj.weight", 200) for i in range(16)}
    assert all(0 <= o < 200 for o in offsets) and len(offsets) > 8  # spread out, not all on one step


def test_top_norm_rows_picks_the_largest_rows():
    g = torch.zeros(10, 7)
    g[[2, 5, 9]] = torch.tensor([3.0, 5.0, 4.0]).unsqueeze(1)
    g[0] = 1.0
    assert top_norm_rows(g, 3).tolist() == [2, 5, 9]


def test_random_rows_are_seeded_distinct_and_sorted():
    rows = random_rows(50, 12, seed=4)
    assert torch.equal(rows, random_rows(50, 12, seed=4)) and not torch.equal(rows, random_rows(50, 12, seed=5))
    assert rows.dtype == torch.int64 and len(set(rows.tolist())) == 12 and torch.equal(rows, rows.sort().values)


def test_oriented_puts_the_short_side_first():
    assert oriented(torch.zeros(3, 8)).shape == (3, 8)
    tall = torch.zeros(8, 3)
    assert oriented(tall).shape == (3, 8) and oriented(tall).data_ptr() == tall.data_ptr()  # a view


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_haar_perfect_reconstruction_and_orthonormality(levels):
    x = torch.randn(5, 48, generator=torch.Generator().manual_seed(levels), dtype=torch.float64)
    approx, details = haar_forward(x, levels)
    assert approx.shape == (5, 48 // 2**levels)
    assert [d.shape[-1] for d in details] == [48 // 2 ** (k + 1) for k in range(levels)]
    torch.testing.assert_close(haar_inverse(approx, details), x, atol=1e-12, rtol=0)
    energy = approx.pow(2).sum() + sum(d.pow(2).sum() for d in details)
    torch.testing.assert_close(energy, x.pow(2).sum())  # Parseval: the transform is orthonormal


def test_haar_of_a_constant_signal_has_no_detail():
    approx, details = haar_forward(torch.full((2, 8), 3.0), 3)
    assert all(torch.count_nonzero(d) == 0 for d in details)
    torch.testing.assert_close(approx, torch.full((2, 1), 3.0 * 8**0.5))


def test_haar_rejects_bad_levels_and_lengths():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels"):
        haar_forward(torch.zeros(2, 12), 3)
    with pytest.raises(ValueError, match="levels must be an int >= 1"):
        haar_forward(torch.zeros(2, 12), 0)
