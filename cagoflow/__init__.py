"""cagoflow: active learning of machine-learning interatomic potentials with CAGO.

The ``cagoflow`` package holds the science (no Parsl); ``cagoflow.apps``,
``cagoflow.executors`` and ``cagoflow.workflows`` hold the workflow layers.
Units throughout: eV, Å, eV/Å, fs, K, bar.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cagoflow")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
