"""The ImageNet study (the paper's future work): blackout on the 50,000 validation images with the published nets.

Introduced in notebook 06; `python -m bagnet_lib imagenet` and docs/imagenet.md. No training: the published
BagNets (and torchvision's ResNet-50) were trained on ImageNet, so one streaming pass
(`blackout.imagenet.stream_blackout`) evaluates every configuration. The order of the checks is the order of
the costs: the folder's layout (before anything is loaded), the weights (hash-checked before they are read),
the class count against the head, then the pass, resumable from `OUT/<model>/partial/`.

Rank 0 writes `OUT/<model>/blackout.csv` (one row per configuration, intervals over images),
`OUT/<model>/summary.json` (top-1 and top-5 with every patch kept, beside the published anchors) and
`OUT/<model>/drop_curve.png`. The anchors apply only to the published weights evaluated in fp32.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from torch.utils.data import Subset
from torchvision.models import ResNet50_Weights

from bagnet_lib.blackout.imagenet import StreamResult, StreamSettings, configuration_count, stream_blackout
from bagnet_lib.blackout.sweep import PAPER_SETTINGS
from bagnet_lib.data.imagenet import CROP, DEFAULT_WORKERS, RESIZE, ValFolder, spread_subset
from bagnet_lib.errors import UserError
from bagnet_lib.figures.plots import plot_imagenet_drop
from bagnet_lib.io import atomic_write, display_path, write_json
from bagnet_lib.nets.distributed import main_first, world
from bagnet_lib.nets.models import WeightsInfo, imagenet_model, model_label
from bagnet_lib.nets.precision import BAGNETSV2_TOP1, BAGNETSV2_URL, resolve_precision, warn_reduced_precision
from bagnet_lib.nets.train import select_device
from bagnet_lib.writeup.paper import BAGNET_PAPER_URL

LEADERBOARD_URL = "https://github.com/inspire-group/patch-defense-leaderboard"
_TV = ResNet50_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]  # torchvision's own evaluation of the weights

# Published ImageNet validation accuracies (%) to check a run of the published weights against.
ANCHORS: tuple[dict, ...] = (
    {"model": "bagnet33", "metric": "top5", "value": 87.6, "precision": "fp32",
     "source": "Brendel & Bethge, ICLR 2019 (the BagNet paper)", "url": BAGNET_PAPER_URL},
    {"model": "bagnet33", "metric": "top1", "value": BAGNETSV2_TOP1["fp32"], "precision": "fp32",
     "source": "bagnetsv2, re-evaluation of the original BagNet-33 weights", "url": BAGNETSV2_URL},
    {"model": "bagnet33", "metric": "top5", "value": 87.00, "precision": "fp32",
     "source": "bagnetsv2, re-evaluation of the original BagNet-33 weights", "url": BAGNETSV2_URL},
    {"model": "bagnet33", "metric": "top1", "value": BAGNETSV2_TOP1["tf32"], "precision": "tf32",
     "source": "bagnetsv2, the same weights with TF32 convolutions", "url": BAGNETSV2_URL},
    {"model": "bagnet33", "metric": "top1", "value": BAGNETSV2_TOP1["fp16"], "precision": "fp16",
     "source": "bagnetsv2, the same weights in fp16 mixed precision", "url": BAGNETSV2_URL},
    {"model": "bagnet33", "metric": "top1", "value": 66.6, "precision": "fp32",
     "source": "patch-defense leaderboard, vanilla clean accuracy of BagNet-33", "url": LEADERBOARD_URL},
    {"model": "bagnet17", "metric": "top1", "value": 58.8, "precision": "fp32",
     "source": "patch-defense leaderboard, vanilla clean accuracy of BagNet-17", "url": LEADERBOARD_URL},
    {"model": "resnet50", "metric": "top1", "value": _TV["acc@1"], "precision": "fp32",
     "source": "torchvision, ResNet50_Weights.IMAGENET1K_V1", "url": ResNet50_Weights.IMAGENET1K_V1.url},
    {"model": "resnet50", "metric": "top5", "value": _TV["acc@5"], "precision": "fp32",
     "source": "torchvision, ResNet50_Weights.IMAGENET1K_V1", "url": ResNet50_Weights.IMAGENET1K_V1.url},
)


def files_digest(folder: ValFolder) -> str:
    """SHA-256 of the folder's relative file list and labels: which images a set of partial sums is over."""
    root = Path(folder.root)
    text = "\n".join(f"{Path(p).relative_to(root).as_posix()}\t{y}" for p, y in folder.samples)
    return hashlib.sha256(text.encode()).hexdigest()


def _interval(row: pd.Series, col: str) -> dict:
    return {"value": 100 * row[col], "ci95": [100 * row[f"{col}_ci_low"], 100 * row[f"{col}_ci_high"]]}


def anchor_table(model_name: str, full: pd.Series, info: WeightsInfo, precision: str) -> list[dict]:
    """The anchors of `model_name`, each beside this run's number where it is comparable (the published weights,
    in the anchor's precision; with TF32 off this run is fp32)."""
    out = []
    for a in ANCHORS:
        if a["model"] != model_name:
            continue
        row = dict(a)
        comparable = info.published and a["precision"] == precision
        row["this_run"] = 100 * full["acc" if a["metric"] == "top1" else "top5"] if comparable else None
        row["difference"] = None if row["this_run"] is None else row["this_run"] - a["value"]
        out.append(row)
    return out


def paper_settings_table(frame: pd.DataFrame) -> list[dict]:
    """The paper's four settings (alternating as a checkerboard, random 25/50/75 %) on patches and on channels:
    top-1 and top-5 (%) averaged over the masks, and the change from the full model (percentage points)."""
    full = frame[frame["kind"] == "full"].iloc[0]
    rows = []
    for reading, kinds in (("patch", {"alternating": "checkerboard", "random": "random"}),
                           ("channel", {"alternating": "channel_alternating", "random": "channel_random"})):
        for kind, frac in PAPER_SETTINGS:
            g = frame[(frame["kind"] == kinds[kind]) & (frame["drop_frac"] == frac)]
            for agg, h in g.groupby("aggregation", sort=False):
                rows.append({"reading": reading, "setting": f"{kind} {frac:.0%}", "aggregation": agg,
                             "masks": len(h), "top1": 100 * h["acc"].mean(), "top5": 100 * h["top5"].mean(),
                             "top1_change": 100 * (h["acc"].mean() - full["acc"]),
                             "top5_change": 100 * (h["top5"].mean() - full["top5"])})
    return rows


def imagenet_study(val_dir: str | Path, model_name: str = "bagnet33", weights: str | Path = "imagenet",
                   out: str | Path = "runs/imagenet", settings: StreamSettings = StreamSettings(),
                   batch_size: int = 32, workers: int = DEFAULT_WORKERS, precision: str = "fp32", every: int = 20,
                   subset: int | None = None, device: str | None = None, progress: bool = True,
                   on_batch: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) the study; rank 0 writes the outputs. Returns the summary (every rank)."""
    for name, value, least in (("batch size", batch_size, 1), ("checkpoint interval", every, 1), ("workers", workers, 0)):
        if value < least:
            raise UserError(f"The {name} must be at least {least} (got {value}).")
    folder = ValFolder(val_dir)  # the layout is checked before anything else is done
    model, info = main_first(lambda: imagenet_model(model_name, weights))  # rank 0 downloads, the others read it
    if len(folder.classes) != info.num_classes:
        raise UserError(f"{val_dir} has {len(folder.classes)} class folders, but the weights' head ({display_path(info.source)}) "
                        f"has {info.num_classes} outputs. The published weights need all 1,000 ImageNet synsets; a "
                        "checkpoint of your own needs one output per class folder, in sorted folder order.")
    dev = select_device(device)
    precision = resolve_precision(precision, dev)
    if precision != "fp32":
        warn_reduced_precision(precision, f"{model_label(model_name)} ({'published' if info.published else 'your'} weights)")
    model.to(dev)
    indices = spread_subset(len(folder), subset)
    dataset = Subset(folder, indices)
    out_dir = Path(out) / model_name
    fingerprint = {"model": model_name, "weights_sha256": info.sha256, "files": files_digest(folder),
                   "images": indices if subset else len(folder), "settings": settings.to_dict(),
                   "batch_size": batch_size, "precision": precision}
    w = world()
    result = stream_blackout(model, dataset, settings, out_dir / "partial", fingerprint, batch_size=batch_size,
                             workers=workers, precision=precision, every=every, progress=progress,
                             label=f"{model_label(model_name)} on {len(dataset)} images", on_batch=on_batch)
    summary = _summary(model_name, model, info, folder, result, settings, precision, dev, batch_size, subset,
                       val_dir)
    if w.main:
        atomic_write(out_dir / "blackout.csv", lambda p: result.frame.to_csv(p, index=False))
        write_json(out_dir / "summary.json", summary)
        plot_imagenet_drop(result.frame, out_dir / "drop_curve.png",
                           title=f"{model_label(model_name)} on ImageNet validation, blackout at test time")
    return summary


def _summary(model_name: str, model, info: WeightsInfo, folder: ValFolder, result: StreamResult,
             settings: StreamSettings, precision: str, dev: torch.device, batch_size: int, subset: int | None,
             val_dir: str | Path) -> dict:
    frame = result.frame
    full = frame[frame["kind"] == "full"].iloc[0]
    grid = result.grid
    reading = (f"the {grid[0]}×{grid[1]} patch logits of {model_label(model_name)} (receptive field "
               f"{model.geometry.size} px)" if model.geometry else
               f"the {grid[0]}×{grid[1]} positions of ResNet-50's last feature map (each sees the whole image)")
    return {
        "model": model_name, "model_label": model_label(model_name),
        "weights": {"source": display_path(info.source), "sha256": info.sha256, "published": info.published,
                    "classes": info.num_classes, "width": info.width},
        "val_dir": display_path(val_dir), "files": len(folder), "evaluated": len(spread_subset(len(folder), subset)),
        "subset": subset, "n_images": result.n_images, "n_unreadable": len(result.unreadable),
        "unreadable": [Path(p).relative_to(folder.root).as_posix() for p in result.unreadable[:100]],
        "transform": f"Resize({RESIZE}) + CenterCrop({CROP}), ImageNet mean/std",
        "precision": precision, "tf32": "off" if precision == "fp32" else "autocast",
        "device": dev.type, "world_size": result.world_size, "batch_size": batch_size, "grid": list(grid),
        "settings": settings.to_dict(), "configurations": configuration_count(settings),
        "full": {"top1": _interval(full, "acc"), "top5": _interval(full, "top5"), "loss": float(full["loss"])},
        "anchors": anchor_table(model_name, full, info, precision),
        "anchors_apply": bool(info.published and precision == "fp32" and subset is None and not result.unreadable),
        "paper_settings": paper_settings_table(frame),
        "timing_rank0": {"batches_this_call": result.batches, **{f"{k}_s": v for k, v in result.seconds.items()}},
        "what_this_tests": (
            f"Patch blackout drops {reading} before averaging them (one mask shared by all images, as in the "
            "paper; `mean` leaves dropped patches out of the average, `zero` counts them as zeros); channel "
            "masking zeroes columns of fc.weight (the paper's code); pixel blackout paints 8 px tiles of the image "
            "grey before the network (a mask per image). Intervals are 95 % normal approximations over the "
            f"{result.n_images} images for one mask; the spread over masks is in blackout.csv."),
    }

