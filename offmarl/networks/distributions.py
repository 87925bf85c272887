"""Action distributions a policy owns, one per kind of action space. Runners, evaluation
and data collection only call these methods (sample, log_prob, entropy, mode), so the
same acting code serves discrete and continuous actions.

Both are NamedTuples, hence pytrees: they pass through jit, vmap and scan.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import distrax
import jax
import jax.numpy as jnp

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # OMIGA's clamp of a Gaussian policy's log-std
_EDGE = 1e-6  # actions this close to a box edge are pulled in before inverting tanh


class ActionDistribution(Protocol):
    def sample(self, rng: jax.Array) -> jax.Array: ...
    def log_prob(self, actions: jax.Array) -> jax.Array: ...
    def entropy(self) -> jax.Array: ...
    def mode(self) -> jax.Array: ...


class MaskedCategorical(NamedTuple):
    """A categorical over each agent's actions from logits that already carry the
    legal-action mask (unavailable actions at a large negative value). [..., A] -> [...]."""

    logits: jax.Array

    def _distrax(self) -> distrax.Categorical:
        return distrax.Categorical(logits=self.logits)

    def sample(self, rng: jax.Array) -> jax.Array:
        return self._distrax().sample(seed=rng)

    def log_prob(self, actions: jax.Array) -> jax.Array:
        return self._distrax().log_prob(actions)

    def entropy(self) -> jax.Array:
        return self._distrax().entropy()

    def mode(self) -> jax.Array:
        """The greedy action: the highest logit (the first of ties)."""
        return jnp.argmax(self.logits, axis=-1)


class DiagGaussian(NamedTuple):
    """A diagonal Gaussian over box actions, unsquashed: the environment clips what falls
    outside the box (the usual choice for on-policy policy gradients, whose ratios need
    the density of the very sample that was drawn). mean, log_std [..., D]."""

    mean: jax.Array
    log_std: jax.Array

    def _normal(self) -> distrax.Normal:
        return distrax.Normal(self.mean, jnp.exp(jnp.clip(self.log_std, LOG_STD_MIN, LOG_STD_MAX)))

    def sample(self, rng: jax.Array) -> jax.Array:
        return self._normal().sample(seed=rng)

    def log_prob(self, actions: jax.Array) -> jax.Array:
        return jnp.sum(self._normal().log_prob(actions), axis=-1)

    def entropy(self) -> jax.Array:
        return jnp.sum(self._normal().entropy(), axis=-1)

    def mode(self) -> jax.Array:
        return self.mean


class CensoredGaussian(NamedTuple):
    """A diagonal Gaussian over box actions whose samples are clipped into [low, high], with
    the likelihood of that clipping: an action on a face of the box has the probability
    of the Gaussian beyond that face, an action inside has the Gaussian density. This is
    how an unsquashed Gaussian policy's data, clipped by the environment (MA-Trace's, and
    `make-datasets`'), came about, so its many actions on the faces are scored as what
    they are instead of as a density at the face (docs/omiga.md, "Actions on the box's
    faces"). mean, log_std [..., D] in action units; low, high [D]. The greedy action is
    the mean clipped into the box."""

    mean: jax.Array
    log_std: jax.Array
    low: jax.Array
    high: jax.Array

    def _std(self) -> jax.Array:
        return jnp.exp(jnp.clip(self.log_std, LOG_STD_MIN, LOG_STD_MAX))

    def sample(self, rng: jax.Array) -> jax.Array:
        draw = self.mean + self._std() * jax.random.normal(rng, self.mean.shape)
        return jnp.clip(draw, self.low, self.high)

    def log_prob(self, actions: jax.Array) -> jax.Array:
        """Log-likelihood of box actions, summed over the action dimensions: [..., D] -> [...]."""
        std = self._std()
        inside = distrax.Normal(self.mean, std).log_prob(actions)
        below = jax.scipy.special.log_ndtr((self.low - self.mean) / std)   # log P(x <= low)
        above = jax.scipy.special.log_ndtr((self.mean - self.high) / std)  # log P(x >= high)
        return jnp.sum(jnp.where(actions <= self.low, below, jnp.where(actions >= self.high, above, inside)), axis=-1)

    def entropy(self) -> jax.Array:
        """The entropy of the Gaussian before clipping (the clipped one mixes masses and densities)."""
        return jnp.sum(distrax.Normal(self.mean, self._std()).entropy(), axis=-1)

    def mode(self) -> jax.Array:
        return jnp.clip(self.mean, self.low, self.high)

    def log_ratio(self, other: CensoredGaussian, actions: jax.Array) -> jax.Array:
        """log self(a) - log other(a) for another censored Gaussian on the same box: [..., D] -> [...]."""
        return self.log_prob(actions) - other.log_prob(actions)


class TanhGaussian(NamedTuple):
    """A diagonal Gaussian squashed by tanh and scaled onto the box [low, high] (OMIGA's
    continuous policy). mean, log_std [..., D]; low, high [D]. Log-probabilities include
    the tanh and scaling Jacobians; the greedy action is the squashed mean."""

    mean: jax.Array
    log_std: jax.Array
    low: jax.Array
    high: jax.Array

    def _scale(self) -> tuple[jax.Array, jax.Array]:
        return (self.high - self.low) / 2.0, (self.high + self.low) / 2.0

    def _std(self) -> jax.Array:
        return jnp.exp(jnp.clip(self.log_std, LOG_STD_MIN, LOG_STD_MAX))

    def _normalised(self, actions: jax.Array) -> jax.Array:
        """Box actions mapped onto (-1, 1) and pulled 1e-6 inside, so atanh stays finite."""
        half, centre = self._scale()
        return jnp.clip((actions - centre) / half, -1.0 + _EDGE, 1.0 - _EDGE)

    def _squash(self, u: jax.Array) -> jax.Array:
        half, centre = self._scale()
        return centre + half * jnp.tanh(u)

    def sample(self, rng: jax.Array) -> jax.Array:
        return self._squash(self.mean + self._std() * jax.random.normal(rng, self.mean.shape))

    def log_prob(self, actions: jax.Array) -> jax.Array:
        """Density of box actions, summed over the action dimensions: [..., D] -> [...]."""
        y = self._normalised(actions)
        gaussian = distrax.Normal(self.mean, self._std()).log_prob(jnp.arctanh(y))
        # da = half (1 - tanh(u)^2) du
        return jnp.sum(gaussian - jnp.log(self._scale()[0] * (1.0 - y**2)), axis=-1)

    def entropy(self) -> jax.Array:
        """The entropy of the Gaussian before squashing (the squashed one has no closed form)."""
        return jnp.sum(distrax.Normal(self.mean, self._std()).entropy(), axis=-1)

    def mode(self) -> jax.Array:
        return self._squash(self.mean)

    def pre_tanh(self, actions: jax.Array) -> jax.Array:
        """u = atanh of box actions normalised to (-1, 1), pulled 1e-6 inside first: [..., D]."""
        return jnp.arctanh(self._normalised(actions))

    def log_ratio(self, other: TanhGaussian, actions: jax.Array) -> jax.Array:
        """log self(a) - log other(a) for a tanh-Gaussian `other` on the same box: [..., D] -> [...].

        Both densities share the tanh and rescaling Jacobian at a, so the difference is
        taken between the Gaussians at u = atanh(a) (in (-1, 1) units), where the Jacobians
        cancel exactly instead of in float arithmetic near the box's faces."""
        u = self.pre_tanh(actions)
        return jnp.sum(distrax.Normal(self.mean, self._std()).log_prob(u)
                       - distrax.Normal(other.mean, other._std()).log_prob(u), axis=-1)
