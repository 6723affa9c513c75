"""Machine-independent arithmetic: accuracy against numpy, exactness of the matrix products."""

import numpy as np
import pytest

from appa.data import portable


def _ulps(a, b):
    return np.abs(a - b) / np.spacing(np.abs(b))


def test_elementary_functions_are_accurate():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-60, 60, 20000), rng.uniform(-1e4, 1e4, 2000)])
    np.testing.assert_allclose(portable.sin(x), np.sin(x), rtol=0, atol=3e-16)
    np.testing.assert_allclose(portable.cos(x), np.cos(x), rtol=0, atol=3e-16)
    small = rng.uniform(-3, 3, 20000)
    np.testing.assert_allclose(portable.sin(small), np.sin(small), rtol=0, atol=2.3e-16)
    np.testing.assert_allclose(portable.cos(small), np.cos(small), rtol=0, atol=2.3e-16)
    e = rng.uniform(-700, 700, 20000)
    assert _ulps(portable.exp(e), np.exp(e)).max() <= 2
    positive = np.exp(rng.uniform(-700, 700, 20000))
    assert _ulps(portable.log(positive), np.log(positive)).max() <= 2
    p = rng.uniform(0.1, 10.0, 1000)
    np.testing.assert_allclose(portable.power(p, 0.19), p**0.19, rtol=1e-15)
    # exact values and special cases
    assert portable.sin(0.0) == 0.0 and portable.cos(0.0) == 1.0 and portable.exp(0.0) == 1.0
    assert portable.log(1.0) == 0.0
    np.testing.assert_array_equal(
        portable.exp(np.array([-800.0, 800.0, -np.inf, np.nan])), [0.0, np.inf, 0.0, np.nan]
    )
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(
            portable.log(np.array([0.0, -1.0, np.inf, np.nan])), [-np.inf, np.nan, np.inf, np.nan]
        )
    with pytest.raises(ValueError, match="arguments"):
        portable.cos(np.array([1e7]))


def test_gauss_legendre_nodes_and_weights():
    for n in (1, 2, 5, 32, 33, 64):
        nodes, weights = portable.gauss_legendre(n)
        ref_nodes, ref_weights = np.polynomial.legendre.leggauss(n)
        np.testing.assert_allclose(nodes, ref_nodes, rtol=0, atol=1e-15)
        np.testing.assert_allclose(weights, ref_weights, rtol=3e-12)  # numpy: 1e-12 off
        np.testing.assert_array_equal(nodes, -nodes[::-1])  # exactly antisymmetric
        np.testing.assert_array_equal(weights, weights[::-1])
        # exact for polynomials of degree 2n - 1
        assert np.sum(weights * nodes ** (2 * n - 2)) == pytest.approx(2 / (2 * n - 1), rel=1e-13)
    with pytest.raises(ValueError, match="at least one"):
        portable.gauss_legendre(0)


def test_standard_normal_moments_and_seeding():
    z = portable.standard_normal(np.random.default_rng(3), (200001,))
    assert z.shape == (200001,)
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.std() - 1) < 5 / np.sqrt(2 * z.size)
    assert abs(np.mean(z**4) - 3) < 0.05  # Gaussian kurtosis
    again = portable.standard_normal(np.random.default_rng(3), (200001,))
    np.testing.assert_array_equal(z, again)


def test_exact_matrix_is_accurate():
    rng = np.random.default_rng(1)
    for K in (3, 22, 64):
        w = rng.standard_normal((K, 40)) * np.exp(rng.uniform(-20, 20, (1, 40)))
        x = rng.standard_normal((7, 5, K)) * np.exp(rng.uniform(-20, 20, (7, 5, 1)))
        exact = portable.ExactMatrix(w)
        scale = np.abs(x) @ np.abs(w)
        assert (x @ exact).shape == (7, 5, 40)
        assert np.all(np.abs(x @ exact - x @ w) <= 1e-9 * scale)
    stacked = rng.standard_normal((6, 22, 32))  # one matrix per leading index
    x = rng.standard_normal((6, 4, 22))
    np.testing.assert_allclose(x @ portable.ExactMatrix(stacked), x @ stacked, atol=1e-8)
    with pytest.raises(ValueError, match="columns"):
        x[..., :3] @ portable.ExactMatrix(stacked)
    with pytest.raises(ValueError, match="finite"):
        portable.ExactMatrix(np.full((2, 2), np.nan))


def test_exact_matrix_does_not_depend_on_the_summation_order():
    """Permuting the summed index reorders every sum inside BLAS; exact sums do not notice."""
    rng = np.random.default_rng(2)
    K = 64
    w = rng.standard_normal((K, 48))
    x = rng.standard_normal((96, K)) * np.exp(rng.uniform(-5, 5, (96, K)))
    reference = x @ portable.ExactMatrix(w)
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(K)
        np.testing.assert_array_equal(x[:, order] @ portable.ExactMatrix(w[order]), reference)
    # a product in two halves (another blocking) is also the same bits
    halves = np.concatenate([x[:48] @ portable.ExactMatrix(w), x[48:] @ portable.ExactMatrix(w)])
    np.testing.assert_array_equal(halves, reference)
