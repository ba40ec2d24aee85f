"""The public surface: every function the CLI calls, one module per concern; the CLI is a thin layer over these.

- training: train, lr_find              - evaluation: evaluate, report
- use: load, predict, export, serve     - data_check: check_data; data_pack: pack_data
- data_manifest: manifest_data (class folders after a review, as a training manifest)
- label_review: review_labels (likely label errors); review_apply: apply_review (the reviewed CSV as a manifest)
- planning: make_config and the one planning step (recipe, sizes, epochs, time)
- runs: run folders
"""

from imgcls._public import API
from imgcls.api.data_check import check_data as check_data
from imgcls.api.data_manifest import manifest_data as manifest_data
from imgcls.api.data_pack import pack_data as pack_data
from imgcls.api.evaluation import evaluate as evaluate
from imgcls.api.evaluation import report as report
from imgcls.api.label_review import review_labels as review_labels
from imgcls.api.planning import make_config as make_config
from imgcls.api.review_apply import apply_review as apply_review
from imgcls.api.training import TrainResult as TrainResult
from imgcls.api.training import lr_find as lr_find
from imgcls.api.training import train as train
from imgcls.api.use import export as export
from imgcls.api.use import load as load
from imgcls.api.use import predict as predict
from imgcls.api.use import serve as serve

# Explicit re-exports (`x as x`); __all__ is the public names, said once in imgcls/_public.py.
__all__ = [*API, "TrainResult"]
