"""`verify`: every published number that needs no training, recomputed from the shipped networks and compared.

`python -m bagnet_lib verify` (`make verify`) lays out a reference run directory (`course.reference`), then
recomputes, with the library's own functions and the run's seeds: both networks' test accuracy, loss and per-image
predictions; the logit cache and the blackout experiments (the paper's settings, the drop curve, the paper's channel
masking, pixel blackout); the accuracy-against-FLOPs frontier; Table 1, the drop curve and the verdicts of the
published seed. Each number is compared with `results/<profile>/summary.json` and the published CSVs: accuracies,
counts and verdicts must be equal; losses within `LOSS_TOLERANCE`. One table (number, published, recomputed,
match) is printed; any mismatch makes the command exit non-zero.

Why a tolerance for losses only: an accuracy is a count of argmaxes, which the same network on the same images in
the same layout and precision reproduces exactly. A loss is a mean of logs of softmaxes; the logits themselves were
bit-identical under 1 and 2 threads on this project's machine (measured on width-0.25 networks at 224 px in bf16),
but oneDNN may block fp32 sums differently with the thread count or on another CPU, which moves a logit's last bits.
1e-4 nats covers such last-bit changes in every logit many times over and is far below anything the write-up rounds
to (three decimals), so an edited loss is still caught.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bagnet_lib.blackout.study import (
    blackout_experiment,
    blackout_runs,
    blackout_summary,
    drop_curve_summary,
    frontier_step,
)
from bagnet_lib.course.reference import lay_out_reference
from bagnet_lib.data.tensors import eval_batch
from bagnet_lib.nets.metrics import correct, evaluate_logits
from bagnet_lib.nets.models import model_label
from bagnet_lib.nets.run import Run
from bagnet_lib.nets.train import predict
from bagnet_lib.writeup.seeds import verdict_key
from bagnet_lib.writeup.summary import blackout_evidence, build_verdicts, table1_rows

LOSS_TOLERANCE = 1e-4
EXPERIMENTS = ("paper", "curve", "channel", "pixel")  # recomputed; structured masks and aggregations are not published


@dataclass(frozen=True)
class Check:
    """One published number next to its recomputation."""

    number: str
    published: object
    recomputed: object
    match: bool


def _num(name: str, published, recomputed, loss: bool = False) -> Check:
    if published is None or recomputed is None:
        return Check(name, published, recomputed, False)
    ok = abs(float(published) - float(recomputed)) <= LOSS_TOLERANCE if loss else float(published) == float(recomputed)
    return Check(name, published, recomputed, ok)


def _test_checks(run: Run, summary: dict, results_dir: Path, bagnet: str) -> tuple[list[Check], dict, dict]:
    """Both networks' test accuracy, its interval, loss and per-image predictions; the recomputed test metrics and
    predictions (for Table 1 and the verdicts)."""
    p, test = run.profile, run.tensors("test", progress=False)
    checks, metrics, predictions = [], {}, {}
    for m in ("resnet50", bagnet):
        logits = predict(run.model(m), eval_batch(test, p.image_size), p.eval_batch_size, precision=p.precision)
        mine = evaluate_logits(logits, test.labels, run.classes, seed=run.seed)
        label, pub = model_label(m), summary[m]["test"]
        checks += [_num(f"{label} test accuracy", pub["acc"], mine["acc"]),
                   Check(f"{label} test accuracy, 95% CI", pub["acc_ci"], list(mine["acc_ci"]),
                         list(pub["acc_ci"]) == list(mine["acc_ci"])),
                   _num(f"{label} test loss", pub["loss"], mine["loss"], loss=True)]
        published = pd.read_csv(results_dir / f"{m}_test_predictions.csv")
        pred = pd.DataFrame({"path": test.paths, "pred": [run.classes[i] for i in logits.argmax(1)],
                             "correct": correct(logits, test.labels).numpy()})
        both = published.merge(pred, on="path", suffixes=("_pub", ""))
        differ = int((both["pred_pub"] != both["pred"]).sum()) + abs(len(published) - len(pred))
        checks.append(Check(f"{label} test predictions that differ, image by image", 0, differ, differ == 0))
        metrics[m] = {**json.loads((results_dir / f"{m}_metrics.json").read_text()), "test": mine}
        predictions[m] = pred
    return checks, metrics, predictions


def _rows_checks(name: str, published: pd.DataFrame, mine: pd.DataFrame, keys: list[str]) -> list[Check]:
    """Every configuration of one blackout experiment: how many accuracies equal, the largest loss difference."""
    both = published.merge(mine, on=keys, how="outer", suffixes=("_pub", ""), indicator=True)
    unmatched = int((both["_merge"] != "both").sum())
    both = both[both["_merge"] == "both"]
    equal = int((both["acc_pub"] == both["acc"]).sum())
    worst = float((both["loss_pub"] - both["loss"]).abs().max()) if len(both) else float("nan")
    return [Check(f"{name}: configurations with equal accuracy", f"{len(published)}", f"{equal} (+{unmatched} unmatched)",
                  equal == len(published) == len(mine) and unmatched == 0),
            Check(f"{name}: largest loss difference", 0.0, worst, worst <= LOSS_TOLERANCE)]


def _summary_checks(published: list[dict], mine: list[dict], keys: tuple[str, ...], label, fields) -> list[Check]:
    out = []
    index = {tuple(r.get(k) for k in keys): r for r in mine}
    for r in published:
        other = index.get(tuple(r.get(k) for k in keys))
        for field, loss in fields:
            if field in r:
                out.append(_num(f"{label(r)}: {field}", r[field], other.get(field) if other else None, loss))
    return out


def _verdict_checks(published: list[dict], mine: list[dict]) -> list[Check]:
    """Each verdict of the published seed; for the claims about accuracy, its evidence word for word."""
    by_key = {verdict_key(v): v for v in mine}
    out = []
    for v in published:
        key = verdict_key(v)
        other = by_key.get(key)
        name = f"verdict {key[0]} {key[1]}" + (f", {key[2]}" if key[2] else "")
        out.append(Check(name, v["verdict"], other["verdict"] if other else None,
                         bool(other) and other["verdict"] == v["verdict"]))
        if other and (key[0] in ("(a)", "(b)", "(c)") or key[2] == "accuracy"):
            out.append(Check(f"{name}: evidence", "as published", "same" if other["evidence"] == v["evidence"] else
                             "differs", other["evidence"] == v["evidence"]))
    return out


def verify(results_dir: str | Path, run_dir: str | Path, data_dir: str | Path | None = None,
           progress: bool = True) -> list[Check]:
    """Recompute the published numbers of results_dir from its shipped networks in `run_dir`; one `Check` each."""
    results_dir = Path(results_dir)
    summary = json.loads((results_dir / "summary.json").read_text())
    run = lay_out_reference(run_dir, results_dir, data_dir, progress)
    bagnet = summary["bagnet"]
    checks, metrics, predictions = _test_checks(run, summary, results_dir, bagnet)
    keys = ["kind", "drop_frac", "seed", "aggregation", "model"]
    for name in EXPERIMENTS:
        published = results_dir / f"blackout_{name}.csv"
        if published.is_file():
            mine = blackout_experiment(run, name, bagnet, progress)
            checks += _rows_checks(f"blackout {name}", pd.read_csv(published), mine, keys)
    runs = blackout_runs(run)
    evidence = blackout_evidence(run, bagnet)
    table = table1_rows(run, metrics, evidence, blackout_summary(runs[runs["model"].isin(["resnet50", bagnet])]), bagnet)
    checks += _summary_checks(summary["table1"], table, ("setting", "reading", "split"),
                              lambda r: f"Table 1, {r['setting']} ({r['reading']}, {r['split']})",
                              [("acc", False), ("diff", False), ("loss", True)])
    checks += _summary_checks(summary.get("drop_curve", []), drop_curve_summary(runs), ("model", "drop_frac", "aggregation"),
                              lambda r: f"drop curve, {100 * r['drop_frac']:.0f}% dropped, {r['aggregation']}",
                              [("acc_mean", False), ("loss_mean", True)])
    if (results_dir / "frontier.csv").is_file():
        mine = frontier_step(run, bagnet, progress)
        pub = pd.read_csv(results_dir / "frontier.csv")
        key = ["model", "method", "parameter"]  # the parameter column mixes numbers and words: compared as text
        checks += _rows_checks("frontier", pub.assign(loss=0.0, parameter=pub["parameter"].astype(str)),
                               mine.assign(loss=0.0, parameter=mine["parameter"].astype(str)), key)[:1]
    verdicts = build_verdicts(run, evidence, predictions, bagnet, summary.get("seeds"))
    checks += _verdict_checks(summary["verdicts"], verdicts)
    return checks


def format_checks(checks: list[Check]) -> str:
    """The table `verify` prints: number, published, recomputed, match; then the count of mismatches."""
    def cell(v) -> str:
        if isinstance(v, float) and not np.isnan(v):
            return f"{v:.6g}"
        return str(v)

    rows = [("number", "published", "recomputed", "match")] + [
        (c.number, cell(c.published), cell(c.recomputed), "yes" if c.match else "NO") for c in checks]
    widths = [min(max(len(r[i]) for r in rows), 90) for i in range(4)]
    lines = ["  ".join(r[i][:90].ljust(widths[i]) for i in range(4)) for r in rows]
    bad = sum(not c.match for c in checks)
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(checks)} numbers checked: {len(checks) - bad} match, {bad} do not"
                 f" (losses within {LOSS_TOLERANCE:g} nats, everything else exactly)")
    return "\n".join(lines)
