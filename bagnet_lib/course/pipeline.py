"""The course as steps over one run directory: prepare (01), train (02, 03); then the blackout study (04,
`bagnet_lib.blackout.study`) and the write-up (05, `bagnet_lib.writeup`).

The notebooks call these steps; the CLI commands `train`, `cache-logits` and `sweep` call them too, and
`python -m bagnet_lib reproduce` runs the notebooks (`runner`). What a run directory holds: `bagnet_lib.nets.run`.
Every step is idempotent: run again, it reuses what is there (training resumes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import pandas as pd
import torch

from bagnet_lib.data.audit import audit_dataset, split_leakage
from bagnet_lib.data.download import download_flowers
from bagnet_lib.data.folder import DEFAULT_DATA_DIR, class_names, find_data_dir, resolve_data_dir
from bagnet_lib.data.split import make_split, read_manifest, read_split, subsample, write_split
from bagnet_lib.data.synthetic import generate_synthetic_dataset
from bagnet_lib.data.tensors import eval_batch
from bagnet_lib.errors import UserError
from bagnet_lib.io import PROJECT_ROOT, write_json
from bagnet_lib.nets.adapt import adapt_step
from bagnet_lib.nets.distributed import main_first, world
from bagnet_lib.nets.metrics import correct, evaluate_logits, nll
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.precision import resolve_precision
from bagnet_lib.nets.profiles import Profile, get_profile, override_args
from bagnet_lib.nets.run import Run
from bagnet_lib.nets.train import load_best, predict, train_model

SYNTHETIC_BANNER = ("=" * 78 + "\n  NO REAL DATASET FOUND: this run uses the embedded SYNTHETIC flowers.\n"
                    "  Its numbers say nothing about the paper. For the real data set BAGNET_DATA\n"
                    "  (e.g. BAGNET_DATA=../shared/data/flowers) or run `python -m bagnet_lib data download`.\n"
                    + "=" * 78)


def choose_data(data_dir: str | Path | None, allow_synthetic: bool = True, try_download: bool = True,
                synthetic_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, bool]:
    """The dataset to use and whether it is synthetic: real data if found, else a download, else synthetic.

    Set BAGNET_NO_DOWNLOAD=1 to skip the download attempt (the tests do: they never touch the network).
    """
    try_download = try_download and not os.environ.get("BAGNET_NO_DOWNLOAD")
    found = find_data_dir(data_dir)
    if found is not None:
        return found, (found / "synthetic.json").is_file()
    if data_dir is not None:  # an explicit path that holds no dataset is an error, not a fallback
        resolve_data_dir(data_dir)
    if try_download:
        try:
            return download_flowers(DEFAULT_DATA_DIR, timeout=5.0, progress=progress), False
        except UserError as exc:
            print(f"[data] download not possible: {exc}")
    if not allow_synthetic:
        resolve_data_dir(None)
    return generate_synthetic_dataset(synthetic_dir or PROJECT_ROOT / "data" / "synthetic", progress=progress), True


def _same_manifest(a: str | None, b: str | None) -> bool:
    return (a is None) == (b is None) and (a is None or Path(a).resolve() == Path(b).resolve())


def default_run_dir(profile: str) -> Path:
    """The notebooks' `RUN_DIR = None`: $BAGNET_RUN_DIR where it holds a run of this profile (`make lab` sets it to
    the ready run it opens: your finished course, or the shipped networks laid out), else runs/<profile>."""
    env = os.environ.get("BAGNET_RUN_DIR")
    if env and (Path(env) / "run.json").is_file():
        if json.loads((Path(env) / "run.json").read_text())["profile"]["name"] == profile:
            return Path(env)
    return PROJECT_ROOT / "runs" / profile


def prepare_run(run_dir: str | Path | None, profile: str | Profile = "cpu", data_dir: str | Path | None = None,
                manifest: str | Path | bool | None = None, seed: int = 0, allow_synthetic: bool = True,
                progress: bool = True) -> Run:
    """Open (or create) a run directory: choose the data, audit it, write the split once. `run_dir` None:
    `default_run_dir`.

    `manifest`: a path,split CSV (e.g. the paper's split); `False` (or "") for this project's own split; `None` for
    the run directory's own split if it exists, else $BAGNET_MANIFEST (set by `make lab` to the paper's split when
    the shared flowers are used, so notebooks run by hand give the same split as `make reproduce`), else this
    project's own split. A run directory keeps its split: asking an existing one for another is an error.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(profile.name)
    explicit = manifest is not None
    if manifest is None:
        manifest = os.environ.get("BAGNET_MANIFEST")
    manifest = str(manifest) if manifest else None  # False, "" and None: this project's own split
    meta_path = run_dir / "run.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta["profile"]["name"] != profile.name or meta["seed"] != seed:
            example = (run_dir.parent / f"{run_dir.name}-seed{seed}" if meta["profile"]["name"] == profile.name
                       else run_dir.parent / profile.name)
            raise UserError(f"{run_dir} holds a run with profile {meta['profile']['name']!r} and seed {meta['seed']}; "
                            f"this one asks for {profile.name!r} and seed {seed}. A run directory holds one course: "
                            "use another run directory (RUN_DIR in a notebook, another --run-dir on the command line), "
                            f"e.g. {example}.")
        if explicit and not meta["synthetic"] and not _same_manifest(manifest, meta.get("manifest")):
            had = f"the split of {meta['manifest']}" if meta.get("manifest") else "this project's own split"
            wants = f"the split of {manifest}" if manifest else "this project's own split"
            raise UserError(f"{run_dir} holds a run made with {had}; this one asks for {wants}. A run directory keeps "
                            "the split it was made with: use another run directory (RUN_DIR, --run-dir), or "
                            "MANIFEST = None to keep the one it has.")
        if data_dir is not None and Path(data_dir).resolve() != Path(meta["data_dir"]).resolve():
            raise UserError(f"{run_dir} was made with data {meta['data_dir']}, not {data_dir}. Use another --run-dir.")
        data, synthetic = Path(meta["data_dir"]), bool(meta["synthetic"])
    else:
        data, synthetic = choose_data(data_dir, allow_synthetic, progress=progress)
        data = data.resolve()
        if synthetic and manifest is not None:
            print(f"[data] ignoring the manifest {manifest}: it belongs to the real flowers, not the synthetic set")
            manifest = None
        meta = {"profile": profile.to_dict(), "data_dir": str(data.resolve()), "synthetic": synthetic, "seed": seed,
                "manifest": str(manifest) if manifest else None, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if synthetic and world().main:
        print(SYNTHETIC_BANNER)
    split_path = run_dir / "split.csv"
    if not split_path.is_file():
        audit = audit_dataset(data, progress=progress)
        write_json(run_dir / "audit.json", audit.to_json())
        split = read_manifest(data, manifest) if manifest else make_split(data, seed=seed, audit=audit)
        if profile.images_per_class:
            split = subsample(split, profile.images_per_class, seed)
        write_split(split, split_path)
        write_json(meta_path, meta)
    split = read_split(split_path)
    classes = class_names(data)
    for sub in ("results", "figures"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return Run(run_dir, profile, data, synthetic, seed, split, classes)


def leakage_report(run: Run, manifest: str | Path | None = None) -> pd.DataFrame:
    """Duplicate groups that cross splits, for this run's split, the paper's manifest and a fresh project split.

    Introduced in notebook 01. Written to results/leakage.csv.
    """
    audit = run.audit()
    tables = {"this run": run.split}
    if manifest:
        tables["paper's split (manifest)"] = read_manifest(run.data_dir, manifest)
    tables["project split (duplicate-aware, conflicts excluded)"] = make_split(run.data_dir, seed=run.seed, audit=audit)
    rows = []
    for name, table in tables.items():
        leaks = split_leakage(table, audit)
        rows.append({"split": name, "images": len(table), "duplicate_groups_across_splits": len(leaks),
                     "groups_in_train_and_test": int(sum({"train", "test"} <= set(s) for s in leaks["splits"])),
                     "label_conflict_files_used": int(table["path"].isin({p for g in audit.conflict_groups for p in g}).sum())})
    out = pd.DataFrame(rows)
    out.to_csv(run.results / "leakage.csv", index=False)
    return out


MARKER = "reference.json"  # in a run directory laid out from the shipped networks (`course.reference`)


def shipped_network(run: Run, model_name: str) -> dict | None:
    """The published metrics of `model_name` where `run` was laid out from the networks shipped with the repository
    (`course.reference`), else None: then there is nothing to train."""
    marker = run.run_dir / MARKER
    if not marker.is_file() or model_name not in json.loads(marker.read_text())["networks"]:
        return None
    return json.loads((run.results / f"{model_name}_metrics.json").read_text())


def train_step(run: Run, model_name: str, progress: bool = True, nproc: int | None = None) -> dict:
    """Train `model_name` (resuming if interrupted), adapt its best checkpoint to the test size where the profile
    asks for it (`nets.adapt`: `<name>_adapted.pt`), then score that network on train, val and test.

    With `nproc` (the notebooks' NPROC, `make reproduce NPROC=8`) the training runs in a child process,
    `torchrun --standalone --nproc_per_node=<nproc> -m bagnet_lib train …`, whose output shows here as it
    comes; this process then reads the metrics it wrote. Under torchrun itself (the CLI), every rank runs
    this function: rank 0 decodes and writes, the evaluation is sharded (`nets.distributed`).
    """
    shipped = shipped_network(run, model_name)
    if shipped is not None:
        if world().main:
            print(f"{model_name}: the network shipped with the repository "
                  f"({json.loads((run.run_dir / MARKER).read_text())['shipped_from']}/{model_name}.pt), with its "
                  "published training results: nothing to train here (`make reproduce` trains it from scratch)")
        return shipped
    if nproc:
        return train_with_torchrun(run, model_name, nproc, progress)
    p, w = run.profile, world()
    progress = progress and w.main
    train, val, test = (main_first(lambda s=s: run.tensors(s, progress)) for s in ("train", "val", "test"))
    torch.manual_seed(run.seed)
    model = build_model(model_name, len(run.classes), pretrained=p.pretrained, feature_extract=p.feature_extract,
                        width=p.width, zero_init_residual=p.zero_init_residual)
    t0 = time.perf_counter()
    result = train_model(model, train, val, p.for_model(model_name), run.run_dir / "checkpoints", model_name, run.seed, progress=progress,
                         history_path=run.results / f"{model_name}_history.csv")
    load_best(model, result.best_checkpoint)
    train_seconds = time.perf_counter() - t0
    mp = p.for_model(model_name)
    adapted = main_first(lambda: adapt_step(model, train, mp, result.best_checkpoint, run.seed, write=w.main,
                                            progress=progress))
    metrics = {"model": model_name, "best_epoch": result.best_epoch, "best_val_acc": result.best_val_acc,
               "precision": resolve_precision(p.precision, next(model.parameters()).device),
               **_trained_with(result.trained_with),
               "train_seconds": float(result.history["seconds"].sum()), "wall_seconds": train_seconds,
               "adapted": {"bn": mp.adapt_bn, "epochs": mp.adapt_epochs, "image_size": mp.image_size,
                           "seconds": time.perf_counter() - t0 - train_seconds} if adapted else None,
               "n_parameters": sum(q.numel() for q in model.parameters())}
    for name, data in (("train", train), ("val", val), ("test", test)):
        logits = predict(model, eval_batch(data, p.image_size), p.eval_batch_size, precision=p.precision)
        metrics[name] = evaluate_logits(logits, data.labels, run.classes, seed=run.seed)
        if name == "test" and w.main:  # per-image predictions: paired comparisons and the images a model gets wrong
            probs = logits.softmax(dim=1)
            pd.DataFrame({"path": data.paths, "label": [run.classes[i] for i in data.labels],
                          "pred": [run.classes[i] for i in probs.argmax(1)], "prob": probs.max(1).values.numpy(),
                          "correct": correct(logits, data.labels).numpy(), "nll": nll(logits, data.labels).numpy()}
                         ).to_csv(run.results / f"{model_name}_test_predictions.csv", index=False)
    if w.main:
        write_json(run.results / f"{model_name}_metrics.json", metrics)
    return metrics


def _trained_with(per_epoch: list[dict]) -> dict:
    """The world size and backend of the training, for its metrics (a list where epochs differed: a resume)."""
    out = {}
    for key in ("world_size", "backend"):
        values = list(dict.fromkeys(e[key] for e in per_epoch))
        out[key] = values[0] if len(values) == 1 else values
    return out


def train_with_torchrun(run: Run, model_name: str, nproc: int, progress: bool = True) -> dict:
    """`train_step` in `nproc` processes: `torchrun --standalone … -m bagnet_lib train` as a child of this one.

    Its output (progress bars, epoch lines, rank 0's error) is copied here as it arrives; a failure raises a
    `UserError` with the child's last lines. Run again, the child resumes from the last complete epoch.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(nproc)}",
           "-m", "bagnet_lib", "train", "--model", model_name, "--profile", run.profile.name,
           "--run-dir", str(run.run_dir), "--seed", str(run.seed)]
    cmd += [a for o in override_args(run.profile) for a in ("--set", o)]
    if not progress:
        cmd.append("--no-progress")
    print(f"[train] torchrun {' '.join(cmd[3:])}", flush=True)  # `python -m torch.distributed.run` is torchrun
    tail: deque[str] = deque(maxlen=30)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            text = chunk.decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            tail.extend(text.splitlines())
    if proc.returncode != 0:
        errors = [line for line in tail if line.startswith("error: ")]
        raise UserError(f"Training {model_name} with torchrun on {nproc} processes failed (exit status "
                        f"{proc.returncode}): {errors[-1] if errors else ' | '.join(list(tail)[-5:])}. "
                        "Fix the cause and run the same step again: training resumes after its last complete epoch.")
    return json.loads((run.results / f"{model_name}_metrics.json").read_text())
