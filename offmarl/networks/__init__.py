"""Neural networks, kept separate from the algorithms that train them."""

from offmarl.networks.mlp import MLPPolicy, MLPValue, masked_logits
from offmarl.networks.recurrent import GRUPolicy

__all__ = ["GRUPolicy", "MLPPolicy", "MLPValue", "masked_logits"]
