"""The action distributions policies own, against NumPy: Gaussian densities and
entropies, the tanh change of variables on a box, and the masked categorical."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offmarl.networks import masked_logits
from offmarl.networks.distributions import LOG_STD_MAX, LOG_STD_MIN, DiagGaussian, MaskedCategorical, TanhGaussian


def np_normal_log_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def test_diag_gaussian_density_entropy_and_mode_match_numpy() -> None:
    rng = np.random.default_rng(0)
    mean, log_std, x = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    log_std[0, 0] = 9.0  # clamped to LOG_STD_MAX
    dist = DiagGaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(log_std, jnp.float32))
    std = np.exp(np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX))
    np.testing.assert_allclose(np.asarray(dist.log_prob(jnp.asarray(x, jnp.float32))),
                               np_normal_log_pdf(x, mean, std).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dist.entropy()), (0.5 * np.log(2 * np.pi * np.e) + np.log(std)).sum(-1),
                               rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(dist.mode()), np.asarray(mean, np.float32))


def test_tanh_gaussian_density_is_a_density_on_the_box() -> None:
    """1-D on [-2, 3]: log_prob equals the change of variables by hand and integrates to 1."""
    low, high = jnp.array([-2.0]), jnp.array([3.0])
    dist = TanhGaussian(jnp.array([[0.4]]), jnp.array([[-0.3]]), low, high)
    a = np.linspace(-2 + 1e-4, 3 - 1e-4, 200_001)
    log_p = np.asarray(jax.vmap(lambda x: dist.log_prob(x[None, None])[0])(jnp.asarray(a, jnp.float32)))
    y = (a - 0.5) / 2.5
    by_hand = np_normal_log_pdf(np.arctanh(y), 0.4, np.exp(-0.3)) - np.log(2.5 * (1 - y**2))
    interior = np.abs(y) < 0.999  # float32 arctanh loses digits at the very edge
    np.testing.assert_allclose(log_p[interior], by_hand[interior], rtol=2e-4, atol=2e-4)
    assert np.trapezoid(np.exp(by_hand), a) == pytest.approx(1.0, abs=1e-3)
    samples = np.asarray(dist.sample(jax.random.PRNGKey(0)))
    assert ((samples >= -2) & (samples <= 3)).all()
    assert float(dist.mode()[0, 0]) == pytest.approx(0.5 + 2.5 * np.tanh(0.4), rel=1e-6)


def test_masked_categorical_scores_like_distrax_and_never_samples_a_masked_action() -> None:
    import distrax

    rng = np.random.default_rng(1)
    avail = rng.uniform(size=(64, 3, 5)) > 0.5
    avail[..., 2] = True
    logits = masked_logits(jnp.asarray(rng.normal(size=(64, 3, 5)), jnp.float32), jnp.asarray(avail))
    dist = MaskedCategorical(logits)
    actions = dist.sample(jax.random.PRNGKey(2))
    assert avail[np.arange(64)[:, None], np.arange(3)[None], np.asarray(actions)].all()
    reference = distrax.Categorical(logits=logits)
    np.testing.assert_array_equal(np.asarray(dist.log_prob(actions)), np.asarray(reference.log_prob(actions)))
    np.testing.assert_array_equal(np.asarray(dist.entropy()), np.asarray(reference.entropy()))
    np.testing.assert_array_equal(np.asarray(dist.mode()), np.asarray(jnp.argmax(logits, -1)))
