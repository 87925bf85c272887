"""Policies acting in environments: the one sampling loop that training, evaluation and
data collection share (loop.py)."""
