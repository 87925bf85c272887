"""Neural networks, kept separate from the algorithms that train them."""

from offmarl.networks.mlp import MLPPolicy, MLPValue, masked_logits

__all__ = ["MLPPolicy", "MLPValue", "masked_logits"]
