"""Brute-force NumPy reference implementations shared by the tests.

They are written straight from the papers' formulas with explicit loops (no
backward recursion), in float64, so that they are an independent check of the
JAX code rather than a copy of it.
"""

from __future__ import annotations

import numpy as np


def vtrace_oracle(
    log_rhos: np.ndarray,
    discounts: np.ndarray,
    rewards: np.ndarray,
    values: np.ndarray,
    bootstrap_value: np.ndarray,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
    pg_rho_bar: float = 1.0,
    lambda_: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """V-trace targets and pg advantages (MA-Trace eq. 3 / IMPALA eq. 1), time-major [T, B].

    vs_t = V(x_t) + sum_{u=t}^{T-1} (prod_{k=t}^{u-1} gamma_k c_k) rho_u delta_u, with
    delta_u = r_u + gamma_u V(x_{u+1}) - V(x_u), rho_u = min(rho_bar, exp(log_rho_u)),
    c_k = lambda * min(c_bar, exp(log_rho_k)) and V(x_T) = bootstrap_value;
    pg_adv_t = min(pg_rho_bar, exp(log_rho_t)) (r_t + gamma_t vs_{t+1} - V(x_t)), vs_T = V(x_T).
    """
    log_rhos = np.asarray(log_rhos, np.float64)
    discounts = np.asarray(discounts, np.float64)
    rewards = np.asarray(rewards, np.float64)
    values = np.asarray(values, np.float64)
    bootstrap_value = np.asarray(bootstrap_value, np.float64)
    num_steps, batch = log_rhos.shape
    all_values = np.concatenate([values, bootstrap_value[None]], axis=0)  # V(x_0) .. V(x_T)
    ratios = np.exp(log_rhos)

    vs = np.zeros((num_steps, batch))
    for b in range(batch):
        for t in range(num_steps):
            total = all_values[t, b]
            for u in range(t, num_steps):
                trace = 1.0
                for k in range(t, u):
                    trace *= discounts[k, b] * lambda_ * min(c_bar, ratios[k, b])
                delta = rewards[u, b] + discounts[u, b] * all_values[u + 1, b] - all_values[u, b]
                total += trace * min(rho_bar, ratios[u, b]) * delta
            vs[t, b] = total

    all_vs = np.concatenate([vs, bootstrap_value[None]], axis=0)
    pg_advantages = np.zeros((num_steps, batch))
    for b in range(batch):
        for t in range(num_steps):
            q_estimate = rewards[t, b] + discounts[t, b] * all_vs[t + 1, b]
            pg_advantages[t, b] = min(pg_rho_bar, ratios[t, b]) * (q_estimate - all_values[t, b])
    return vs, pg_advantages


def n_step_return_oracle(
    discounts: np.ndarray, rewards: np.ndarray, bootstrap_value: np.ndarray
) -> np.ndarray:
    """G_t = sum_{u=t}^{T-1} (prod_{k=t}^{u-1} gamma_k) r_u + (prod_{k=t}^{T-1} gamma_k) V(x_T)."""
    discounts = np.asarray(discounts, np.float64)
    rewards = np.asarray(rewards, np.float64)
    bootstrap_value = np.asarray(bootstrap_value, np.float64)
    num_steps, batch = rewards.shape
    returns = np.zeros((num_steps, batch))
    for b in range(batch):
        for t in range(num_steps):
            total, scale = 0.0, 1.0
            for u in range(t, num_steps):
                total += scale * rewards[u, b]
                scale *= discounts[u, b]
            returns[t, b] = total + scale * bootstrap_value[b]
    return returns


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def dense(params: dict, x: np.ndarray) -> np.ndarray:
    """A flax Dense layer, x @ kernel + bias, in float64."""
    return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


def mlp(params: dict, x: np.ndarray) -> np.ndarray:
    """offmarl's MLPs (networks/mlp.py) from their flax parameters: ReLU hidden layers
    (`_Torso_0`), then the output layer `Dense_0`."""
    torso = params["_Torso_0"]
    x = np.asarray(x, np.float64)
    for i in range(len(torso)):
        x = np.maximum(dense(torso[f"Dense_{i}"], x), 0.0)
    return dense(params["Dense_0"], x)


def tanh_gaussian_log_prob(
    mean: np.ndarray, log_std: np.ndarray, actions: np.ndarray, low: np.ndarray, high: np.ndarray,
    mean_clip: float = 9.0, log_std_range: tuple[float, float] = (-5.0, 2.0), edge: float = 1e-6,
) -> np.ndarray:
    """log-density of box actions under a = c + h tanh(u), u ~ N(mean, std^2), summed over
    the last axis: log N(u) - log(h (1 - tanh(u)^2)) with u = atanh((a - c) / h), the
    normalised action first pulled `edge` inside (-1, 1); the mean clipped to +-mean_clip
    and the log-std to log_std_range, as OMIGA's released actor does. In float64."""
    mean = np.clip(np.asarray(mean, np.float64), -mean_clip, mean_clip)
    log_std = np.clip(np.asarray(log_std, np.float64), *log_std_range)
    half, centre = (np.asarray(high, np.float64) - low) / 2.0, (np.asarray(high, np.float64) + low) / 2.0
    y = np.clip((np.asarray(actions, np.float64) - centre) / half, -1.0 + edge, 1.0 - edge)
    u = np.arctanh(y)
    std = np.exp(log_std)
    gaussian = -0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2.0 * np.pi)
    return np.sum(gaussian - np.log(half * (1.0 - y**2)), axis=-1)


def local_inputs(obs) -> np.ndarray:
    """[B, N, O] observations with the one-hot agent id appended, float64."""
    obs = np.asarray(obs, np.float64)
    return np.concatenate([obs, np.broadcast_to(np.eye(obs.shape[1]), obs.shape[:2] + (obs.shape[1],))], axis=-1)


def box_transition_batch(spec, rng: np.random.Generator, size: int, actions):
    """A random TransitionBatch for box env `spec`: `actions()` draws each joint action array
    [size, N, D]; masks of width 0, a terminal every 4th row and a time-limit cut every 5th."""
    import jax.numpy as jnp

    from offmarl.types import TransitionBatch

    def f32(x):
        return jnp.asarray(x, jnp.float32)

    n = spec.num_agents
    no_masks = jnp.ones((size, n, 0), bool)
    return TransitionBatch(
        obs=f32(rng.normal(size=(size, n, spec.obs_dim))), state=f32(rng.normal(size=(size, spec.state_dim))),
        avail=no_masks, actions=f32(actions()), reward=f32(rng.normal(size=size)),
        done=f32(np.arange(size) % 4 == 1), next_obs=f32(rng.normal(size=(size, n, spec.obs_dim))),
        next_state=f32(rng.normal(size=(size, spec.state_dim))), next_avail=no_masks,
        next_actions=f32(actions()), valid=f32(np.arange(size) % 5 != 4),
    )


def censored_gaussian_log_prob(
    mean: np.ndarray, log_std: np.ndarray, actions: np.ndarray, low: np.ndarray, high: np.ndarray,
    log_std_range: tuple[float, float] = (-5.0, 2.0),
) -> np.ndarray:
    """log-likelihood of box actions under x ~ N(mean, std^2) clipped into [low, high], summed
    over the last axis: the density inside, P(x <= low) on the low face and P(x >= high) on
    the high face; the mean held within three half-widths of the centre, the log-std clamped.
    In float64, with scipy."""
    from scipy import stats

    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    centre, half = (high + low) / 2.0, (high - low) / 2.0
    mean = np.clip(np.asarray(mean, np.float64), centre - 3 * half, centre + 3 * half)
    std = np.exp(np.clip(np.asarray(log_std, np.float64), *log_std_range))
    a = np.asarray(actions, np.float64)
    return np.sum(np.where(a <= low, stats.norm.logcdf(low, mean, std),
                           np.where(a >= high, stats.norm.logsf(high, mean, std), stats.norm.logpdf(a, mean, std))),
                  axis=-1)
