"""The package version (defined once, in :mod:`llenergymeasure_contract._version`)."""

from llenergymeasure_contract._version import CONTRACT_VERSION, __version__

__all__ = ["CONTRACT_VERSION", "__version__"]
