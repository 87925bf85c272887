"""offmarl: cooperative multi-agent RL in JAX.

Online: MA-Trace (multi-agent V-trace) with a fused single-process runner.
Offline: OMIGA and InSPO from logged datasets (see the issues tracker for status).
"""

__version__ = "0.1.0"

from offmarl.utils.xla_workarounds import apply_xla_workarounds

apply_xla_workarounds()  # before JAX starts a backend: see that module
