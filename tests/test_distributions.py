"""The action distributions policies own, against NumPy: Gaussian densities and
entropies, the tanh change of variables on a box, and the masked categorical."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offmarl.networks import masked_logits
from offmarl.networks.distributions import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    CensoredGaussian,
    DiagGaussian,
    MaskedCategorical,
    TanhGaussian,
)


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
    assert np.trapezoid(np.exp(log_p), a) == pytest.approx(1.0, abs=1e-3)  # the code's density, not the formula's
    samples = np.asarray(dist.sample(jax.random.PRNGKey(0)))
    assert ((samples >= -2) & (samples <= 3)).all()
    assert float(dist.mode()[0, 0]) == pytest.approx(0.5 + 2.5 * np.tanh(0.4), rel=1e-6)


def test_censored_gaussian_scores_faces_by_the_mass_beyond_them_and_sums_to_one() -> None:
    """1-D on [-2, 3] with most of the mass near the upper face: inside, the Gaussian density;
    on a face, the Gaussian's probability beyond it (scipy); density plus the two masses is 1;
    samples are clipped and land on the upper face as often as that mass says."""
    from scipy import stats

    mean, log_std = 2.6, -0.2
    std = np.exp(log_std)
    dist = CensoredGaussian(jnp.array([[mean]]), jnp.array([[log_std]]), jnp.array([-2.0]), jnp.array([3.0]))
    score = jax.vmap(lambda x: dist.log_prob(x[None, None])[0])
    a = np.linspace(-2.0, 3.0, 400_001)
    log_p = np.asarray(score(jnp.asarray(a, jnp.float32)))
    np.testing.assert_allclose(log_p[1:-1], np_normal_log_pdf(a[1:-1], mean, std), rtol=1e-4, atol=1e-4)
    upper, lower = stats.norm.logsf(3.0, mean, std), stats.norm.logcdf(-2.0, mean, std)
    assert log_p[-1] == pytest.approx(upper, rel=1e-5) and log_p[0] == pytest.approx(lower, rel=1e-5)
    assert np.trapezoid(np.exp(log_p[1:-1]), a[1:-1]) + np.exp(upper) + np.exp(lower) == pytest.approx(1.0, abs=1e-5)
    samples = np.asarray(jax.vmap(dist.sample)(jax.random.split(jax.random.PRNGKey(0), 100_000)))
    assert samples.min() >= -2.0 and samples.max() <= 3.0
    assert np.mean(samples == 3.0) == pytest.approx(np.exp(upper), abs=0.005)
    assert float(dist.mode()[0, 0]) == pytest.approx(mean)
    assert float(CensoredGaussian(jnp.array([[4.0]]), jnp.array([[0.0]]), jnp.array([-2.0]),
                                  jnp.array([3.0])).mode()[0, 0]) == 3.0
    # The gradient of a face action's score is the inverse Mills ratio, bounded, not a density's.
    grad = jax.grad(lambda m: CensoredGaussian(m, jnp.array([[log_std]]), jnp.array([-2.0]),
                                               jnp.array([3.0])).log_prob(jnp.array([[3.0]]))[0])(jnp.array([[mean]]))
    z = (3.0 - mean) / std
    assert float(grad[0, 0]) == pytest.approx(stats.norm.pdf(z) / stats.norm.sf(z) / std, rel=1e-4)


def test_censored_gaussian_sums_dimensions_and_ratios_are_differences() -> None:
    from scipy import stats

    rng = np.random.default_rng(3)
    low, high = np.array([-1.0, -1.0, 0.0]), np.array([1.0, 1.0, 2.0])
    mean, log_std = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)) * 0.5
    actions = np.clip(rng.normal(size=(5, 3)) * 1.5, low, high)
    std = np.exp(np.clip(log_std, LOG_STD_MIN, LOG_STD_MAX))
    by_hand = np.where(actions <= low, stats.norm.logcdf(low, mean, std),
                       np.where(actions >= high, stats.norm.logsf(high, mean, std),
                                stats.norm.logpdf(actions, mean, std))).sum(-1)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    dist = CensoredGaussian(f32(mean), f32(log_std), f32(low), f32(high))
    other = CensoredGaussian(f32(mean + 0.3), f32(log_std - 0.2), f32(low), f32(high))
    np.testing.assert_allclose(np.asarray(dist.log_prob(f32(actions))), by_hand, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dist.log_ratio(other, f32(actions))),
                               np.asarray(dist.log_prob(f32(actions)) - other.log_prob(f32(actions))), rtol=1e-6)
    assert (actions == high).any() and (actions == low).any()  # both faces were exercised


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
