"""llenergymeasure_harness: the measuring instrument that runs inside each backend image.

Main entry points: :func:`run_experiment` (one experiment from a
:class:`~llenergymeasure_contract.env.HarnessEnv`), :class:`NvmlEnergyMeter` (energy windows) and
:class:`TimeseriesSampler`. ``python -m llenergymeasure_harness`` runs the env contract.
"""

import logging

from llenergymeasure_contract._version import CONTRACT_VERSION, __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

from llenergymeasure_harness.energy import NvmlEnergyMeter, TimeseriesSampler  # noqa: E402
from llenergymeasure_harness.experiment import PhaseError, run_experiment  # noqa: E402

__all__ = [
    "CONTRACT_VERSION",
    "NvmlEnergyMeter",
    "PhaseError",
    "TimeseriesSampler",
    "__version__",
    "run_experiment",
]
