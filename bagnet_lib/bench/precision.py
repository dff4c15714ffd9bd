"""`bench precision`: does bf16 training cost accuracy? fp32 and bf16 on the same short schedule.

Both networks are trained with `train.train_model` twice from the same initial weights and the same
batches: once in fp32 with the default layout, once in the `cpu` profile's setting (bf16 autocast,
channels-last for ResNet-50), for a few epochs of the `cpu` recipe (its cosine schedule compressed to
those epochs), on the real flowers with the paper's split when they are here, else on a fresh split.
Reported per epoch: validation accuracy and loss and seconds; the choice between the two is made on
nothing else. The quick run (tests) uses the synthetic flowers and the smoke profile.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bagnet_lib.data.folder import find_data_dir
from bagnet_lib.io import PROJECT_ROOT
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.train import train_model

MODELS = ("resnet50", "bagnet33")
PAPER_SPLIT = PROJECT_ROOT.parent / "shared" / "data" / "flowers_paper_split.csv"


def run(quick: bool = False, epochs: int = 4) -> dict:
    """Train each model `epochs` epochs in fp32 and in the profile's precision; validation curves side by side."""
    from bagnet_lib.course.pipeline import prepare_run

    t_start = time.perf_counter()
    base = get_profile("smoke" if quick else "cpu")
    base = replace(base, epochs=1 if quick else epochs, warmup_epochs=min(base.warmup_epochs, 1))
    arms = {"fp32_nchw": replace(base, precision="fp32", channels_last=False), "profile": base}
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_precision_") as tmp:
        if quick:
            from bagnet_lib.data.synthetic import generate_synthetic_dataset

            data_dir = generate_synthetic_dataset(Path(tmp) / "synthetic", n_per_class=16, image_size=64, seed=0,
                                                  progress=False)
        else:
            data_dir = find_data_dir(None)  # $BAGNET_DATA, then data/flowers (None: download or synthetic)
        shared = PAPER_SPLIT.parent / "flowers"
        manifest = PAPER_SPLIT if data_dir is not None and shared.is_dir() and \
            Path(data_dir).resolve() == shared.resolve() else None
        run_ = prepare_run(Path(tmp) / "run", base, data_dir, manifest, seed=0, progress=False)
        train, val = run_.tensors("train", progress=False), run_.tensors("val", progress=False)
        for name in MODELS:
            out[name] = {}
            for key, profile in arms.items():
                torch.manual_seed(0)
                model = build_model(name, len(run_.classes), width=profile.width,
                                    zero_init_residual=profile.zero_init_residual)
                result = train_model(model, train, val, profile, Path(tmp) / key, name, seed=0, progress=not quick)
                h = result.history
                out[name][key] = {"precision": profile.precision, "channels_last": profile.channels_last,
                                  "val_acc": h["val_acc"].tolist(), "val_loss": h["val_loss"].tolist(),
                                  "train_loss": h["train_loss"].tolist(), "seconds": h["seconds"].tolist()}
            f, b = out[name]["fp32_nchw"], out[name]["profile"]
            out[name]["final_val_acc_difference"] = b["val_acc"][-1] - f["val_acc"][-1]
        data = "synthetic" if run_.synthetic else "real"
    return {"benchmark": "precision", "quick": quick, "data": data, "split": "paper" if manifest else "fresh",
            "n_train": len(train), "n_val": len(val), "epochs": base.epochs, "image_size": base.image_size,
            "width": base.width, "profile": base.name, "models": out, "wall_s": time.perf_counter() - t_start}


def format_table(result: dict) -> str:
    """Final validation accuracy (and loss) of each model in each precision (Markdown)."""
    r = result
    lines = [f"`{r['profile']}` recipe for {r['epochs']} epochs ({r['image_size']} px, width {r['width']}), "
             f"{r['data']} data, {r['split']} split, {r['n_val']} validation images:", "",
             "| model | fp32, NCHW: val acc / loss | profile's setting: val acc / loss | difference in val acc | "
             "seconds per epoch (fp32 / profile) |", "| --- | --- | --- | --- | --- |"]
    for name, m in r["models"].items():
        f, b = m["fp32_nchw"], m["profile"]
        sec = lambda a: sum(a["seconds"]) / len(a["seconds"])  # noqa: E731
        lines.append(f"| {name} | {f['val_acc'][-1]:.3f} / {f['val_loss'][-1]:.3f} | {b['val_acc'][-1]:.3f} / "
                     f"{b['val_loss'][-1]:.3f} | {m['final_val_acc_difference']:+.3f} | {sec(f):.0f} / {sec(b):.0f} |")
    return "\n".join(lines)
