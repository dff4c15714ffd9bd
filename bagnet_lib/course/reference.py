"""A ready run directory from the networks shipped with the repository: the course without training.

`publish_networks` (called by `runner.publish`) ships a published run's evaluated networks through
`nets.shipped`; `lay_out_reference` (`python -m bagnet_lib reference --run-dir DIR`, `make reference`) turns them
back into a run directory: the data checked to be the images they were trained on (same files, same split), the
split, the networks where the course looks for them, and the published training results (histories, metrics, test
predictions), so that notebooks 02 and 03 find their networks trained and say so (`pipeline.shipped_network`), and 04 and 05
run on them. `verify` recomputes the published numbers in such a directory.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from bagnet_lib.course.pipeline import MARKER, prepare_run
from bagnet_lib.data.folder import find_data_dir
from bagnet_lib.data.split import read_split, write_split
from bagnet_lib.errors import UserError
from bagnet_lib.io import atomic_write, display_path, write_json
from bagnet_lib.nets.adapt import adaptation_label
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.run import Run
from bagnet_lib.nets.shipped import (
    SPLIT,
    data_fingerprint,
    load_shipped,
    networks_dir,
    read_manifest,
    ship_networks,
    verified_file,
)

PER_MODEL_RESULTS = ("{}_metrics.json", "{}_history.csv", "{}_test_predictions.csv")


def fingerprint(run: Run, models: list[str]) -> dict:
    """What the shipped networks were trained on and with: the profile and its training settings, the data (its
    published path, and `data_fingerprint` of the split's files), the split, the seed, the adaptation, torch."""
    meta = json.loads((run.run_dir / "run.json").read_text())
    return {"profile": run.profile.name, "training": run.profile.training_fields(), "bagnet": models[-1],
            "seed": run.seed, "data": display_path(run.data_dir),
            "data_fingerprint": data_fingerprint(run.data_dir, list(run.split["path"])),
            "split": Path(meta["manifest"]).name if meta.get("manifest") else "this project's split",
            "n_images": {s: int((run.split["split"] == s).sum()) for s in ("train", "val", "test")},
            "adaptation": {m: adaptation_label({"bn": run.profile.for_model(m).adapt_bn,
                                                "epochs": run.profile.for_model(m).adapt_epochs,
                                                "image_size": run.profile.image_size}) or None for m in models},
            "torch": torch.__version__}


def publish_networks(run_dir: str | Path, results_dir: str | Path) -> Path:
    """Ship the networks that the run in `run_dir` evaluated in notebooks 04 and 05 (ResNet-50 and the BagNet its
    write-up studied) into results_dir/networks (`nets.shipped.ship_networks`, its one writer)."""
    meta = json.loads((Path(run_dir) / "run.json").read_text())
    run = prepare_run(run_dir, meta["profile"]["name"], None, None, meta["seed"], progress=False)
    summary = run.results / "summary.json"
    models = ["resnet50", json.loads(summary.read_text())["bagnet"] if summary.is_file() else run.bagnet()]
    return ship_networks({m: run.checkpoint(m) for m in models}, run.run_dir / "split.csv",
                         networks_dir(results_dir), fingerprint(run, models))


def _no_flowers(folder: Path, man: dict, why: str) -> UserError:
    return UserError(
        f"The networks shipped in {display_path(folder)} were trained on {man['data']} with {man['split']} "
        f"({sum(man['n_images'].values()):,} images), and {why}. Numbers computed on other images would not be the "
        "published setting, so nothing is laid out. Get the paper's flowers and split with `python -m bagnet_lib data "
        "download --source cs229` (or point BAGNET_DATA at a copy of the Kaggle flowers), or train on the data you "
        "have with `make reproduce`.")


def lay_out_reference(run_dir: str | Path, results_dir: str | Path, data_dir: str | Path | None = None,
                      progress: bool = True) -> Run:
    """A run directory from the networks shipped in results_dir/networks: checked, on the same images and split.

    Refuses, in one paragraph, a network whose hash does not match its manifest, data that are not the images the
    networks were trained on, a profile whose training settings changed since, and a run directory that holds
    another run. Laid out again, it reuses what is there."""
    folder = networks_dir(results_dir)
    man = read_manifest(folder)
    for name in man["networks"]:
        verified_file(folder, name)
    profile = get_profile(man["profile"])
    if profile.training_fields() != man["training"]:
        changed = sorted(k for k in man["training"] if profile.training_fields().get(k) != man["training"][k])
        raise UserError(f"The `{profile.name}` profile has changed since the networks in {display_path(folder)} were "
                        f"published ({', '.join(changed)}): they no longer match it. Republish them (`make reproduce`), "
                        "or check out the commit that published them.")
    data = find_data_dir(data_dir)
    if data is None or (data / "synthetic.json").is_file():
        raise _no_flowers(folder, man, "no such dataset was found" if data is None else f"{data} is the synthetic one")
    split = read_split(folder / SPLIT)
    missing = [p for p in split["path"] if not (data / p).is_file()]
    if missing:
        raise _no_flowers(folder, man, f"{data} lacks {len(missing):,} of their images (e.g. {missing[0]})")
    if data_fingerprint(data, list(split["path"])) != man["data_fingerprint"]:
        raise _no_flowers(folder, man, f"the images in {data} differ from them (other file sizes)")
    run_dir = Path(run_dir)
    marker = run_dir / MARKER
    if (run_dir / "run.json").is_file() and not marker.is_file():
        raise UserError(f"{run_dir} already holds a run that was not laid out from the shipped networks; use another "
                        "run directory for the reference run (e.g. runs/reference).")
    run = prepare_run(run_dir, profile, data, folder / SPLIT, man["seed"], allow_synthetic=False, progress=progress)
    if not run.split.equals(split):  # a profile that subsamples (smoke) drew its own sample: the shipped one is it
        write_split(split, run_dir / "split.csv")
        run = prepare_run(run_dir, profile, data, None, man["seed"], allow_synthetic=False, progress=False)
    for name in man["networks"]:
        target = run.checkpoint(name)
        if not target.is_file():
            state = load_shipped(folder, name)
            atomic_write(target, lambda p, s=state: torch.save(s, p))
        for pattern in PER_MODEL_RESULTS:
            src = Path(results_dir) / pattern.format(name)
            if src.is_file():
                shutil.copyfile(src, run.results / src.name)
    write_json(marker, {"shipped_from": display_path(folder), "networks": sorted(man["networks"]),
                        "manifest": man})
    return run
