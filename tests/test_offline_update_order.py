"""The order and inputs of OMIGA's `update` (docs/omiga.md, as in the authors' released
code: policy, then Q + mixer, then V, then the soft targets), and the soft target update of
OMIGA and InSPO, checked against float64 NumPy forward passes.

Each expected parameter set is one step of the algorithm's own optimiser on the library's
pure loss, fed with inputs computed by hand from the networks that step must read: the
exponent z from the V before the update and the *old* targets, the TD target from the old
target V and mixer, the V loss from the old target Q and mixer. The online and target
networks start apart, the learning rate is large and the Adam moments are warm (a fresh
Adam's first step is lr * sign(g), blind to the gradient's size), so reading any other
network, or updating in any other order, moves the parameters visibly."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from oracles import local_inputs, log_softmax, mlp
from test_offline_losses import BOX_SPEC, SPEC, box_batch, np_actor_log_prob, np_mixer, np_q, np_v, random_batch

from offmarl.algos import ALGORITHMS
from offmarl.algos.omiga import OMIGAState, omiga_q_loss, omiga_v_loss, weighted_bc_loss
from offmarl.envs.base import BoxActions, EnvSpec
from offmarl.networks import with_agent_id
from offmarl.types import TransitionBatch

TAU = 0.3  # far from the default 0.005 and from 1 - TAU
LR = 0.05  # a step that moves V, Q and the mixer enough to change what later steps read
RTOL, ATOL = 1e-4, 1e-5


def f32(x: Any) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def f64(x: Any) -> np.ndarray:
    return np.asarray(x, np.float64)


def leaves_close(got: Any, want: Any, rtol: float = RTOL, atol: float = ATOL) -> None:
    """Every leaf of two trees of the same structure agrees."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(f64(g), f64(w), rtol=rtol, atol=atol)


def max_leaf_difference(a: Any, b: Any) -> float:
    return max(float(np.abs(f64(x) - f64(y)).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def warm_opt_state(optimizer: optax.GradientTransformation, params: Any, seed: int) -> Any:
    """The optimiser's state after one step on a random gradient: Adam's moments nonzero, so
    the next step depends on the size of the gradient and not only on its sign."""
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    grads = jax.tree.unflatten(treedef, [f32(0.3 * rng.normal(size=np.shape(x))) for x in leaves])
    return optimizer.update(grads, optimizer.init(params), params)[1]


def expected_step(optimizer: optax.GradientTransformation, params: Any, opt_state: Any,
                  loss: Callable[[Any], jax.Array]) -> tuple[Any, Any]:
    """One step of `optimizer` on `loss` from (params, opt_state), compiled as one program."""

    def step(params: Any, opt_state: Any) -> tuple[Any, Any]:
        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return jax.jit(step)(params, opt_state)


def soft_update_by_hand(target: Any, online: Any, tau: float) -> Any:
    """(1 - tau) target + tau online per leaf, in float64."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * f64(t) + tau * f64(o), target, online)


# -- NumPy forward passes of either action space -------------------------------------------


def np_local_q(spec: EnvSpec, params: Any, batch: TransitionBatch) -> np.ndarray:
    """OMIGA's local Q_i at the dataset actions [B, N]: the action as an input on a box,
    else one output per action."""
    if isinstance(spec.action_space, BoxActions):
        return np_q(params, batch.obs, batch.actions)
    values = mlp(params["params"], local_inputs(batch.obs))
    return np.take_along_axis(values, np.asarray(batch.actions)[..., None], axis=-1)[..., 0]


def np_log_pi(spec: EnvSpec, params: Any, batch: TransitionBatch) -> np.ndarray:
    """[B, N] log pi(a_i|o_i) of the shared actor: a tanh-Gaussian on a box, else the
    softmax over the available actions."""
    if isinstance(spec.action_space, BoxActions):
        return np_actor_log_prob(params, batch)
    logits = np.where(np.asarray(batch.avail), mlp(params["params"], local_inputs(batch.obs)), -np.inf)
    return np.take_along_axis(log_softmax(logits), np.asarray(batch.actions)[..., None], axis=-1)[..., 0]


# -- OMIGA -------------------------------------------------------------------------------------


def omiga_case(spec: EnvSpec) -> tuple[Any, OMIGAState]:
    """OMIGA with tau = TAU on `spec`; online critics and targets from different seeds,
    spread policy outputs, warm optimiser states."""
    config = ALGORITHMS["omiga"].config_class(hidden_sizes=(8, 8), mixer_hidden_size=8, alpha=0.5, gamma=0.9,
                                              tau=TAU, lr=LR)
    assert config.tau == TAU
    algo = ALGORITHMS["omiga"].build(config, spec)
    init = jax.jit(algo.init)
    state, target = init(jax.random.PRNGKey(0)), init(jax.random.PRNGKey(1)).critics
    policy = jax.tree.map(lambda x: 3.0 * x, state.policy)
    opt = algo.optimizer
    state = OMIGAState(policy, state.critics, target, warm_opt_state(opt, policy, 1),
                       warm_opt_state(opt, (state.critics.q, state.critics.mixer), 2),
                       warm_opt_state(opt, state.critics.v, 3))
    return algo, state


@pytest.mark.parametrize("action_space", ["discrete", "box"])
def test_omiga_update_steps_policy_then_q_and_mixer_then_v_then_targets_on_the_old_networks(
        action_space: str) -> None:
    """Policy: weighted BC with z from the V before the update and the old target Q and
    mixer. Q + mixer: TD onto r + gamma (1 - d) V_tot from the old target V and mixer at s'.
    V: the exponential loss against the old target Q and mixer. Targets: (1 - tau) old
    target + tau new online for Q, V and the mixer; the policy has no target."""
    spec, batch = (SPEC, random_batch(40, size=12)) if action_space == "discrete" else (BOX_SPEC, box_batch(41, 12))
    algo, state = omiga_case(spec)
    cfg, online, target = algo.config, state.critics, state.target
    new, metrics = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(5))
    reward, done, valid = f64(batch.reward), f64(batch.done), f64(batch.valid)
    inputs = with_agent_id(batch.obs)

    # Inputs by hand, each from the networks it must come from.
    q_target = np_local_q(spec, target.q, batch)
    w_target, _ = np_mixer(target.mixer, batch.state)
    v_before = np_v(online.v, batch.obs)
    z = np.clip(w_target * (q_target - v_before) / cfg.alpha, -10, 10)
    next_v_target = np_v(target.v, batch.next_obs)
    next_w_target, next_b_target = np_mixer(target.mixer, batch.next_state)
    td_target = reward + cfg.gamma * (1 - done) * (np.sum(next_w_target * next_v_target, -1) + next_b_target)
    assert 0.1 < np.abs(z).max() < 10  # the weights are not all one, the clip does not bind everywhere

    # The alternatives a wrong order or a wrong network would read differ from these.
    q_online, (w_online, b_online) = np_local_q(spec, online.q, batch), np_mixer(online.mixer, batch.state)
    v_after = np_v(new.critics.v, batch.obs)
    assert np.abs(np.clip(w_target * (q_target - v_after) / cfg.alpha, -10, 10) - z).max() > 0.05
    assert np.abs(np.clip(w_online * (q_online - v_before) / cfg.alpha, -10, 10) - z).max() > 0.05
    next_w_new, next_b_new = np_mixer(new.target.mixer, batch.next_state)
    new_td = reward + cfg.gamma * (1 - done) * (np.sum(next_w_new * np_v(new.target.v, batch.next_obs), -1)
                                                 + next_b_new)
    assert np.abs(new_td - td_target).max() > 0.05

    # The losses the update reports, at the parameters before it, by hand.
    want_policy_loss = -np.mean(np.exp(z) * np_log_pi(spec, state.policy, batch))
    np.testing.assert_allclose(float(metrics["policy_loss"]), want_policy_loss, rtol=RTOL)
    np.testing.assert_allclose(float(metrics["weight_mean"]), np.exp(z).mean(), rtol=RTOL)
    q_tot = np.sum(w_online * q_online, -1) + b_online
    np.testing.assert_allclose(float(metrics["q_loss"]), np.sum(valid * (q_tot - td_target) ** 2) / valid.sum(),
                               rtol=RTOL)
    m = max(z.max(), -1.0)  # the V loss's exponent is the policy's z
    want_v_loss = np.mean(np.exp(z - m) + np.exp(-m) * w_target * v_before / cfg.alpha)
    np.testing.assert_allclose(float(metrics["v_loss"]), want_v_loss, rtol=RTOL)

    # (1) The policy: one optimiser step of weighted BC with the by-hand z.
    def policy_loss(params: Any) -> jax.Array:
        return weighted_bc_loss(algo.log_prob(params, batch.obs, batch.avail, batch.actions), f32(z))

    want_policy, want_policy_opt = expected_step(algo.optimizer, state.policy, state.policy_opt, policy_loss)
    leaves_close(new.policy, want_policy)
    leaves_close(new.policy_opt, want_policy_opt)

    # (2) Q and the mixer: one step on the TD loss onto the old targets' bootstrap.
    def q_loss(q_and_mixer: tuple) -> jax.Array:
        q_params, mixer_params = q_and_mixer
        w, b = algo.mixer.apply(mixer_params, batch.state)
        return omiga_q_loss(algo.q_net(q_params, inputs, batch.actions), w, b, batch.reward, batch.done,
                            f32(next_v_target), f32(next_w_target), f32(next_b_target), cfg.gamma, batch.valid)

    (want_q, want_mixer), want_q_opt = expected_step(algo.optimizer, (online.q, online.mixer), state.q_opt, q_loss)
    leaves_close((new.critics.q, new.critics.mixer), (want_q, want_mixer))
    leaves_close(new.q_opt, want_q_opt)

    # (3) V: one step on the exponential loss against the old target Q and mixer.
    def v_loss(v_params: Any) -> jax.Array:
        return omiga_v_loss(f32(q_target), algo.v_net.apply(v_params, inputs), f32(w_target), cfg.alpha)

    want_v, want_v_opt = expected_step(algo.optimizer, online.v, state.v_opt, v_loss)
    leaves_close(new.critics.v, want_v)
    leaves_close(new.v_opt, want_v_opt)

    # (4) The targets: Polyak averages of the old targets and the *new* online networks.
    assert new.target._fields == ("q", "v", "mixer")  # no policy target
    leaves_close(new.target, soft_update_by_hand(target, new.critics, TAU), rtol=1e-5, atol=1e-6)
    assert max_leaf_difference(new.critics, online) > 0.01  # the old online networks would not do


# -- InSPO ---------------------------------------------------------------------------------------


def np_value(params: Any, x: Any) -> np.ndarray:
    """An MLPValue by hand: [..., I] -> [...]."""
    return mlp(params["params"], f64(x))[..., 0]


def test_inspo_soft_update_moves_joint_q_and_v_targets_toward_the_new_critics() -> None:
    """target <- (1 - tau) target + tau online for the joint Q and V, with the online critics
    after this update's step; that step bootstraps from the old target V(s')."""
    config = ALGORITHMS["inspo"].config_class(hidden_sizes=(8, 8), tau=TAU, lr=LR, gamma=0.9, behaviour_warmup=0)
    assert config.tau == TAU
    algo = ALGORITHMS["inspo"].build(config, SPEC)
    init = jax.jit(algo.init)
    state, other = init(jax.random.PRNGKey(0)), init(jax.random.PRNGKey(1)).critics
    state = state._replace(target=(other.q_joint, other.v_joint),
                           critic_opt=warm_opt_state(algo.optimizer, state.critics, 4))
    batch = random_batch(42, size=12)
    new, metrics = jax.jit(algo.update)(state, batch, jax.random.PRNGKey(6))

    # The critics' step read the old target V(s'): its TD loss at the critics before it.
    one_hot = np.eye(SPEC.num_actions)[np.asarray(batch.actions)].reshape(len(batch.reward), -1)
    q = np_value(state.critics.q_joint, np.concatenate([f64(batch.state), one_hot], axis=-1))
    td = f64(batch.reward) + config.gamma * (1 - f64(batch.done)) * np_value(state.target[1], batch.next_state)
    valid = f64(batch.valid)
    np.testing.assert_allclose(float(metrics["q_loss"]), np.sum(valid * (q - td) ** 2) / valid.sum(), rtol=RTOL)

    online_after = (new.critics.q_joint, new.critics.v_joint)
    assert max_leaf_difference(online_after, (state.critics.q_joint, state.critics.v_joint)) > 0.01
    assert max_leaf_difference(online_after, state.target) > 0.1
    leaves_close(new.target, soft_update_by_hand(state.target, online_after, TAU), rtol=1e-5, atol=1e-6)
