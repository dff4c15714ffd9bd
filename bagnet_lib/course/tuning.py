"""Tuning runs of a profile, recorded: `python -m bagnet_lib tune --name … --set image_size=160 …`.

Each run trains the chosen models with a profile whose fields are replaced by `--set` (in its own run
directory, resumable like any training), then appends one record per model to
`results/tuning/<profile>.json`: the settings that differ from the profile, best validation epoch and
accuracy, the validation accuracy of the network evaluated (adapted to the test size where the run asks for it,
`nets.adapt`), per-epoch validation accuracy, test accuracy and loss, seconds per epoch, the machine's load.
Choices are made on validation accuracy; the test numbers are recorded because hiding them would be worse.
`tuning_table` renders the file as docs/profiles.md's "How the cpu profile was tuned" table (the `tuning` block).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bagnet_lib.course.pipeline import prepare_run, train_step
from bagnet_lib.io import PROJECT_ROOT, write_json
from bagnet_lib.nets.profiles import get_profile

TUNING_DIR = PROJECT_ROOT / "results" / "tuning"


def tune(name: str, overrides: dict, models: tuple[str, ...] = ("resnet50", "bagnet33"), profile: str = "cpu",
         run_dir: str | Path | None = None, data_dir: str | Path | None = None, manifest: str | Path | None = None,
         seed: int = 0, out: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Train `models` with `profile` and `overrides`; append their records to results/tuning/<profile>.json."""
    base = get_profile(profile)
    p = get_profile(profile, **overrides)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    run = prepare_run(run_dir or Path("runs") / "tune" / slug, p, data_dir, manifest, seed, progress=progress)
    out = Path(out) if out else TUNING_DIR / f"{profile}.json"
    records = []
    for model in models:
        m = train_step(run, model, progress)
        hist = _history(run, model)
        seconds = sorted(hist["seconds"])
        records.append({
            "run": name, "model": model, "settings": {k: v for k, v in p.to_dict().items()
                                                      if getattr(base, k) != v},
            "epochs": p.for_model(model).epochs, "image_size": p.image_size, "train_crop": p.for_model(model).train_crop,
            "precision": m.get("precision", p.precision),
            "best_epoch": m["best_epoch"], "best_val_acc": m["best_val_acc"],
            "val_acc": m["val"]["acc"], "adapted": m.get("adapted"),  # the evaluated network's (adapted where it was)
            "test_acc": m["test"]["acc"], "test_loss": m["test"]["loss"], "train_acc_eval_transform": m["train"]["acc"],
            "median_epoch_seconds": seconds[len(seconds) // 2],
            "val_acc_by_epoch": [None if v != v else round(v, 4) for v in hist["val_acc"]],  # None: not validated
            "load_average_at_end": round(os.getloadavg()[0], 2),
            "data": "$BAGNET_DATA" if os.environ.get("BAGNET_DATA") else "default data folder",
            "split": "the paper's (manifest)" if manifest else "this project's, seeded",
        })
        book = json.loads(out.read_text()) if out.is_file() else {"what": f"tuning runs of the {profile} profile",
                                                                  "runs": []}
        book["runs"] = replace_or_append(book["runs"], records[-1])
        write_json(out, book)
    return records


def replace_or_append(runs: list[dict], record: dict) -> list[dict]:
    """`runs` with the record of the same run name and model replaced where it stands (a re-measured row keeps its
    place in the table, next to the rows it is read against), or `record` appended when it is new."""
    same = [i for i, r in enumerate(runs) if r["run"] == record["run"] and r["model"] == record["model"]]
    if not same:
        return runs + [record]
    return [record if i == same[0] else r for i, r in enumerate(runs) if i == same[0] or i not in same]


def _history(run, model: str) -> dict:
    import pandas as pd

    return pd.read_csv(run.results / f"{model}_history.csv").to_dict("list")


def tuning_table(book: dict) -> str:
    """Markdown: one row per tuning run (both models side by side), from results/tuning/<profile>.json."""
    by_run: dict[str, dict] = {}
    for r in book["runs"]:
        by_run.setdefault(r["run"], {})[r["model"]] = r
    lines = ["| run | ResNet-50 val / test (best epoch) | BagNet-33 val / test (best epoch) | median seconds per "
             "epoch (ResNet / BagNet) |", "| --- | --- | --- | --- |"]
    for run, m in by_run.items():
        cell = lambda r: (f"{r.get('val_acc', r['best_val_acc']):.3f} / {r['test_acc']:.3f} ({r['best_epoch']}/{r['epochs']})"  # noqa: E731
                          if r else "–")
        sec = lambda r: f"{r['median_epoch_seconds']:.1f}" if r else "–"  # noqa: E731
        r50, b33 = m.get("resnet50"), m.get("bagnet33")
        lines.append(f"| {run} | {cell(r50)} | {cell(b33)} | {sec(r50)} / {sec(b33)} |")
    return "\n".join(lines)
