"""Neural networks, kept separate from the algorithms that train them."""

from offmarl.networks.mlp import (
    MLPActionInputValue,
    MLPActionValues,
    MLPGaussianPolicy,
    MLPPolicy,
    MLPValue,
    MonotonicMixer,
    masked_logits,
    with_agent_id,
)
from offmarl.networks.recurrent import GRUPolicy

__all__ = [
    "GRUPolicy", "MLPActionInputValue", "MLPActionValues", "MLPGaussianPolicy", "MLPPolicy", "MLPValue",
    "MonotonicMixer", "masked_logits", "with_agent_id",
]
