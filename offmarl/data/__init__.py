"""Offline datasets: the in-memory layout (dataset.py), OG-MARL-compatible vaults on disk
(vault.py), episode collection (collect.py), dataset cards (card.py) and the generation
of datasets of several qualities (make_datasets.py). See docs/datasets.md."""

from offmarl.data.dataset import OfflineDataset, concatenate

__all__ = ["OfflineDataset", "concatenate"]
