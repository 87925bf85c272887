"""Running standardisation of network inputs (observation normalisation).

The moments are merged batch by batch with Chan, Golub and LeVeque's pairwise update, so
the running mean and variance equal those of every row seen so far, whatever the batch
sizes. Brax has the same thing (`brax.training.acme.running_statistics`), but brax is
deprecated and importing it would load it on every environment family; this is the whole
of what is needed.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

STANDARDISED_CLIP = 10.0
"""Standardised inputs are clipped to [-10, 10], as brax's and Stable-Baselines' normalisers do."""
_VAR_EPS = 1e-8


class RunningMoments(NamedTuple):
    """Count, mean and (population) variance of the rows seen so far, per feature."""

    count: jax.Array  # []
    mean: jax.Array  # [dim]
    var: jax.Array  # [dim]


def init_moments(dim: int) -> RunningMoments:
    """No rows seen: standardising is the identity until the first update."""
    return RunningMoments(jnp.zeros((), jnp.float32), jnp.zeros((dim,), jnp.float32), jnp.ones((dim,), jnp.float32))


def update_moments(moments: RunningMoments, rows: jax.Array) -> RunningMoments:
    """Merge the rows of `rows` ([..., dim], every leading axis a row) into `moments`."""
    rows = rows.reshape(-1, rows.shape[-1]).astype(jnp.float32)
    n = jnp.asarray(rows.shape[0], jnp.float32)
    batch_mean, batch_var = jnp.mean(rows, axis=0), jnp.var(rows, axis=0)
    total = moments.count + n
    delta = batch_mean - moments.mean
    # With no rows seen yet moments.var is 1, but its weight moments.count is 0.
    sum_squares = moments.var * moments.count + batch_var * n + delta**2 * moments.count * n / total
    return RunningMoments(total, moments.mean + delta * n / total, sum_squares / total)


def standardise(moments: RunningMoments, x: jax.Array) -> jax.Array:
    """(x - mean) / std, clipped to +-STANDARDISED_CLIP; no gradient flows into the moments."""
    moments = jax.lax.stop_gradient(moments)
    scaled = (x - moments.mean) / jnp.sqrt(moments.var + _VAR_EPS)
    return jnp.clip(scaled, -STANDARDISED_CLIP, STANDARDISED_CLIP)
