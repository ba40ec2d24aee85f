"""The public surface: every function the CLI calls, one module per concern; the CLI is a thin layer over these.

- training: train, lr_find              - evaluation: evaluate, report
- use: load, predict, export, serve     - data_check: check_data
- planning: make_config and the one planning step (recipe, sizes, epochs, time)
- runs: run folders
"""

from imgcls.api.data_check import check_data
from imgcls.api.evaluation import evaluate, report
from imgcls.api.planning import make_config
from imgcls.api.training import TrainResult, lr_find, train
from imgcls.api.use import export, load, predict, serve

__all__ = [
    "train",
    "evaluate",
    "report",
    "load",
    "predict",
    "export",
    "serve",
    "lr_find",
    "check_data",
    "make_config",
    "TrainResult",
]
