"""Pipelines that chain ordinary runs: `sweep` runs a grid of algorithms x environments x
seeds (see docs/sweep.md), `make_datasets` trains, scores and collects OG-MARL-style
datasets (docs/datasets.md), and `collect` turns a run's checkpoint into a vault."""
