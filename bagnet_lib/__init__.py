"""bagnet-blackout: the library behind the course (notebooks 01–05).

The names a notebook or a user calls first are here; everything else is in the folder of its concern:
`data` (01), `nets` (02, 03), `blackout` (04), `writeup` (05), `figures`, `course` (the steps and the
headless runner) and `bench`. The folders and their layers: docs/architecture.md.

    >>> import torch
    >>> from bagnet_lib import aggregate, bagnet33, make_mask
    >>> model = bagnet33(num_classes=5).eval()
    >>> patch_logits = model.patch_logits(torch.zeros(1, 3, 224, 224))
    >>> tuple(patch_logits.shape)                  # a 24×24 grid of patch logits at 224 px
    (1, 5, 24, 24)
    >>> keep = make_mask("random", 24, 24, drop_frac=0.5, seed=0)
    >>> tuple(aggregate(patch_logits, keep).shape)  # image logits from the kept half of the patches
    (1, 5)
"""
from bagnet_lib.blackout.aggregate import aggregate
from bagnet_lib.blackout.masks import make_mask
from bagnet_lib.blackout.study import blackout_experiment
from bagnet_lib.blackout.sweep import LogitCache, cache_logits, summarize_sweep, sweep
from bagnet_lib.course.pipeline import prepare_run, train_step
from bagnet_lib.errors import UserError
from bagnet_lib.nets.metrics import accuracy, bootstrap_ci, cross_entropy
from bagnet_lib.nets.models import MODEL_NAMES, bagnet9, bagnet17, bagnet33, build_model, resnet50
from bagnet_lib.nets.profiles import PROFILES, get_profile
from bagnet_lib.nets.run import Run

__all__ = [
    "MODEL_NAMES", "PROFILES", "LogitCache", "Run", "UserError", "accuracy", "aggregate", "bagnet9", "bagnet17",
    "bagnet33", "blackout_experiment", "bootstrap_ci", "build_model", "cache_logits", "cross_entropy",
    "get_profile", "make_mask", "prepare_run", "resnet50", "summarize_sweep", "sweep", "train_step",
]
