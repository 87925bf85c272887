"""Published figures that a suite table shows beside our own runs.

Peers' SMAX figures: final win rates read from published plots (Mava's
docs/smax_benchmark.md, which also draws JaxMARL's reported finals; about 10M env steps;
each value about ±0.05). The MA-Trace paper's figures are SMAC median win rates in percent
(MA-Trace (obs) / QMIX / MAPPO): a different simulator, shown for orientation only.
The same tables, their sources and caveats are in docs/references.md (sections
"MA-Trace: the paper" and "Peer results on SMAX"). SMAX is not SMAC: its 5m_vs_6m is
much harder than SMAC's and its 6h_vs_8z much easier, so the paper's column is for
orientation only."""

from __future__ import annotations

PEER_COLUMNS: tuple[str, ...] = ("JaxMARL IPPO", "JaxMARL MAPPO", "Mava rec-IPPO", "Mava rec-MAPPO")
PEER_ENV_STEPS = 10_000_000

PEER_SMAX_WIN_RATES: dict[str, tuple[float, float, float, float]] = {
    "smax:2s3z": (0.90, 1.00, 0.89, 0.95),
    "smax:3s5z": (0.55, 0.70, 1.00, 0.97),
    "smax:3s_vs_5z": (0.60, 0.0, 0.99, 0.93),
    "smax:3s5z_vs_3s6z": (0.02, 0.35, 0.70, 0.76),
    "smax:5m_vs_6m": (0.12, 0.05, 0.06, 0.10),
    "smax:6h_vs_8z": (0.95, 0.20, 0.99, 1.00),
    "smax:10m_vs_11m": (0.28, 0.40, 0.32, 0.67),
    "smax:27m_vs_30m": (0.10, 0.15, 0.32, 0.79),
}

PAPER_SMAC_COLUMN = "paper, SMAC (MA-Trace/QMIX/MAPPO %)"
PAPER_SMAC_MEDIAN_WIN_PERCENT: dict[str, tuple[int, int, int]] = {
    "smax:2s3z": (99, 94, 98),
    "smax:3s5z": (97, 82, 90),
    "smax:1c3s5z": (100, 96, 100),
    "smax:5m_vs_6m": (78, 71, 75),
    "smax:10m_vs_11m": (96, 94, 84),
    "smax:27m_vs_30m": (99, 64, 10),
    "smax:3s5z_vs_3s6z": (87, 79, 79),
    "smax:MMM2": (98, 86, 0),
    "smax:2s_vs_1sc": (99, 95, 99),
    "smax:3s_vs_5z": (0, 82, 23),
    "smax:6h_vs_8z": (85, 79, 8),
    "smax:bane_vs_bane": (100, 91, 94),
    "smax:2c_vs_64zg": (98, 96, 99),
    "smax:corridor": (91, 75, 0),
}


def has_published(env: str) -> bool:
    """Whether a suite table has anything to show beside `env`."""
    return env in PEER_SMAX_WIN_RATES or env in PAPER_SMAC_MEDIAN_WIN_PERCENT

