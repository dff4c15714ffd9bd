"""The seed study: how much of a run's numbers is the luck of one training seed.

One run directory per training seed, all of the same course (profile, BagNet, data, split): the reference run
`runs/cpu` (its own seed) and its siblings `runs/cpu-seed1`, `runs/cpu-seed2`, … (`seed_run_dir`). Each ran
notebooks 01–05, so each has its own `results/summary.json`; this module reads them and writes one row per seed to
the reference run's `results/seeds.csv` (its only writer). `summary` then adds the spread over seeds to the
write-up (claim (a) cites it) and `report` shows the table. Introduced in notebook 05; run by
`python -m bagnet_lib seeds` (`make seeds`), which trains the missing seeds first (`runner.seed_study`).

The per-seed numbers are the *changes* a blackout causes (masked − all kept, test accuracy), because the
seeds' networks start from different accuracies. The spread over seeds is a Student-t interval of the mean
over the seeds (`stats.t_interval`): with three seeds its 95 % quantile is 4.30, so it is wide, honestly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bagnet_lib.blackout.study import find
from bagnet_lib.errors import UserError
from bagnet_lib.io import write_text
from bagnet_lib.nets.metrics import t_interval

SEEDS_CSV = "seeds.csv"

# The headline numbers of one seed: column → (what it is, for the report's table header).
NUMBERS = {
    "resnet50_test_acc": "ResNet-50 test acc",
    "bagnet_test_acc": "BagNet test acc",
    "gap": "BagNet − ResNet-50",
    "patch_random25_change": "patch 25%",
    "patch_random50_change": "patch 50%",
    "patch_random75_change": "patch 75%",
    "patch_checkerboard_change": "patch checkerboard",
    "channel_random25_change": "channel 25%",
    "channel_random50_change": "channel 50%",
    "channel_random75_change": "channel 75%",
    "channel_parity_change": "channel parity",
    "pixel50_bagnet_change": "pixel 50% (BagNet)",
    "pixel50_resnet50_change": "pixel 50% (ResNet-50)",
    "loss_null_c": "(d) c",
    "bagnet_pareto_points": "BagNet points on the front",
}
# The verdicts compared across seeds: column → (claim prefix, reading, measure; "" where a claim has one measure).
VERDICTS = {"verdict_a_model": ("(a)", "model", ""), "verdict_b_patch": ("(b)", "patch", ""),
            "verdict_b_channel": ("(b)", "channel", ""), "verdict_c_patch": ("(c)", "patch", ""),
            "verdict_c_channel": ("(c)", "channel", ""), "verdict_d_patch_loss": ("(d)", "patch", "loss"),
            "verdict_d_patch_accuracy": ("(d)", "patch", "accuracy"),
            "verdict_d_channel_loss": ("(d)", "channel", "loss"),
            "verdict_d_channel_accuracy": ("(d)", "channel", "accuracy"),
            "verdict_e_within": ("(e)", "within", ""), "verdict_e_compute": ("(e)", "compute", "")}


def verdict_key(verdict: dict) -> tuple[str, str, str]:
    """(claim prefix, reading, measure) of a verdict, as `VERDICTS` names them (claim (e)'s BagNet-only reading is
    "within")."""
    reading = "within" if verdict["reading"].startswith("compute, ") else verdict["reading"]
    return verdict["claim"][:3], reading, verdict.get("measure", "")


def verdict_name(column: str) -> str:
    """A verdict column of seeds.csv in words, e.g. "(d) patch, accuracy" (also a column of an older table)."""
    if column in VERDICTS:
        claim, reading, measure = VERDICTS[column]
    else:  # verdict_<claim>_<reading>[_<measure>]
        _, letter, reading, *rest = column.split("_")
        claim, measure = f"({letter})", "_".join(rest)
    reading = "compute, BagNet only" if reading == "within" else reading
    return f"{claim} {reading}" + (f", {measure}" if measure else "")


# What must be the same in every seed's run for the rows to be comparable.
SAME = ("profile", "bagnet", "pretrained", "synthetic_data", "data_dir", "setting")


def seed_run_dir(run_dir: str | Path, seed: int) -> Path:
    """Where training seed `seed` of the run in `run_dir` lives: a sibling, `<run_dir>-seed<seed>`."""
    run_dir = Path(run_dir)
    return run_dir.parent / f"{run_dir.name}-seed{seed}"


def finished_seeds(run_dir: str | Path) -> list[int]:
    """The seeds N of every `<run_dir>-seedN` beside `run_dir` whose write-up finished (results/summary.json), sorted."""
    run_dir = Path(run_dir)
    prefix = f"{run_dir.name}-seed"
    return sorted(int(d.name[len(prefix):]) for d in run_dir.parent.glob(f"{prefix}*")
                  if d.name[len(prefix):].isdigit() and (d / "results" / "summary.json").is_file())


def _change(summary: dict, reading: str, kind: str, frac: float) -> float:
    """Table 1's paired change (masked − all kept) of one blackout row."""
    for r in summary["table1"]:
        if r["reading"] == reading and r.get("kind") == kind and abs(r.get("drop_frac", -1) - frac) < 1e-9:
            return float(r["diff"])
    return float("nan")


def _pixel_change(summary: dict, model: str, frac: float = 0.5) -> float:
    """Pixel blackout's change of `model`'s test accuracy (mean over its seeds − nothing painted)."""
    entry = find(summary["blackout"], "pixel", frac, "model", model)
    return float(entry["acc_mean"] - summary[model]["test"]["acc"]) if entry else float("nan")


def seed_row(summary: dict, run_name: str, timings: dict | None = None) -> dict:
    """One seed's row of seeds.csv, from its run's summary.json (and the runner's timings.json)."""
    b = summary["bagnet"]
    verdicts = {verdict_key(v): v for v in summary["verdicts"]}
    a = verdicts[("(a)", "model", "")]["numbers"]
    d = verdicts.get(("(d)", "patch", "loss"), verdicts.get(("(d)", "patch", ""), {})).get("numbers", {}).get("mean_fit", {})
    frontier = summary.get("frontier") or []
    row = {"seed": summary["seed"], "run": run_name, "bagnet": b,
           "resnet50_test_acc": summary["resnet50"]["test"]["acc"], "bagnet_test_acc": summary[b]["test"]["acc"],
           "gap": a["diff"], "gap_ci_low": a["ci"][0], "gap_ci_high": a["ci"][1],
           "resnet50_best_epoch": summary["resnet50"]["best_epoch"], "bagnet_best_epoch": summary[b]["best_epoch"],
           **{f"patch_random{int(100 * f)}_change": _change(summary, "patch", "random", f) for f in (0.25, 0.5, 0.75)},
           "patch_checkerboard_change": _change(summary, "patch", "checkerboard", 0.5),
           **{f"channel_random{int(100 * f)}_change": _change(summary, "channel", "random", f) for f in (0.25, 0.5, 0.75)},
           "channel_parity_change": _change(summary, "channel", "alternating", 0.5),
           "pixel50_bagnet_change": _pixel_change(summary, b), "pixel50_resnet50_change": _pixel_change(summary, "resnet50"),
           "loss_null_c": d.get("c", float("nan")), "loss_null_r2": d.get("r2", float("nan")),
           "bagnet_pareto_points": sum(1 for p in frontier if p.get("pareto") and p["model"] == b),
           "course_minutes": sum(timings.values()) / 60 if timings else float("nan")}
    for col, key in VERDICTS.items():
        row[col] = verdicts[key]["verdict"] if key in verdicts else ""
    return row


def _read_summary(run_dir: Path) -> dict:
    path = run_dir / "results" / "summary.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: the run in {run_dir} has not finished its write-up (notebook 05). "
                        f"Run its course first (`python -m bagnet_lib reproduce --run-dir {run_dir} --resume` with the "
                        "same profile, data and seed), or `python -m bagnet_lib seeds`, which does it for every seed.")
    return json.loads(path.read_text())


def collect(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per run directory (the first is the reference run), checked to be the same course.

    Raises a UserError naming the run that differs (another profile, BagNet, dataset or setting) or repeats a seed.
    """
    rows, first = [], None
    for run_dir in map(Path, run_dirs):
        summary = _read_summary(run_dir)
        if first is None:
            first = (run_dir, summary)
        else:
            for key in SAME:
                if summary.get(key) != first[1].get(key):
                    raise UserError(f"{run_dir} is not the same course as {first[0]}: its `{key}` is "
                                    f"{summary.get(key)!r}, not {first[1].get(key)!r}. A seed study compares training "
                                    "seeds of one course only; move that run directory away or rerun it with the "
                                    "reference run's settings.")
        timings_path = run_dir / "results" / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else None
        rows.append(seed_row(summary, run_dir.name, timings))
    df = pd.DataFrame(rows)
    repeated = df["seed"][df["seed"].duplicated()].tolist()
    if repeated:
        raise UserError(f"Training seed {repeated[0]} appears twice among {', '.join(map(str, run_dirs))}: each run of "
                        "a seed study needs its own seed.")
    return df


def write_seeds(run_dir: str | Path, seed_dirs: list[str | Path]) -> pd.DataFrame:
    """Write RUN_DIR/results/seeds.csv: the reference run in `run_dir`, then each of `seed_dirs`; return it."""
    df = collect([run_dir, *seed_dirs])
    write_text(Path(run_dir) / "results" / SEEDS_CSV, df.to_csv(index=False))
    return df


def read_seeds(run_dir: str | Path) -> pd.DataFrame | None:
    """RUN_DIR/results/seeds.csv, or None when no seed study was run there."""
    path = Path(run_dir) / "results" / SEEDS_CSV
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None


def spread_over_seeds(df: pd.DataFrame) -> dict:
    """Mean, standard deviation (n − 1), range and 95 % Student-t interval over the seeds of every number, and
    which verdicts every seed shares (the rest differ between seeds)."""
    out: dict = {"n": int(len(df)), "seeds": [int(s) for s in df["seed"]], "mean": {}, "sd": {}, "min": {}, "max": {},
                 "t_ci": {}}
    for col in [*NUMBERS, "gap_ci_low", "gap_ci_high", "loss_null_r2", "course_minutes"]:
        v = df[col].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0:
            continue
        out["mean"][col], out["min"][col], out["max"][col] = float(v.mean()), float(v.min()), float(v.max())
        out["sd"][col] = float(v.std(ddof=1)) if v.size > 1 else 0.0
        out["t_ci"][col] = list(t_interval(v))
    present = [col for col in VERDICTS if col in df]  # a table written before a verdict existed lacks its column
    out["verdicts_shared"] = {col: df[col].iloc[0] for col in present if df[col].nunique() == 1}
    out["verdicts_differ"] = {col: {int(s): v for s, v in zip(df["seed"], df[col])} for col in present
                              if df[col].nunique() > 1}
    return out


def seeds_summary(run_dir: str | Path, current: dict | None = None) -> dict | None:
    """The seed study as summary.json holds it (`rows` and `spread`), or None without seeds.csv.

    `current` ({"seed", "resnet50_test_acc", "bagnet_test_acc"}: the run as it is now) must match the table's row
    of that seed; a table left from an earlier training of the run is refused, saying how to redo it.
    """
    df = read_seeds(run_dir)
    if df is None:
        return None
    if current is not None:
        row = df[df["seed"] == current["seed"]]
        stale = row.empty or any(not np.isclose(float(row.iloc[0][k]), float(current[k]), rtol=0, atol=1e-12)
                                 for k in ("resnet50_test_acc", "bagnet_test_acc"))
        if stale:
            raise UserError(f"{Path(run_dir) / 'results' / SEEDS_CSV} does not describe this run any more (its row for "
                            f"seed {current['seed']} has other test accuracies, or there is none): it was written before "
                            "the run's networks were trained again. Run the seed study again (`make seeds`, or `python "
                            f"-m bagnet_lib seeds --run-dir {run_dir}`), or delete that file.")
    return {"rows": df.to_dict("records"), "spread": spread_over_seeds(df)}
