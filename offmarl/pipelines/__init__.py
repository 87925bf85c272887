"""Pipelines built from ordinary runs: `sweep` runs a grid of algorithms x environments x
seeds, each cell an ordinary run directory made by the `offmarl` command line, and
aggregates the results (see docs/sweep.md)."""
