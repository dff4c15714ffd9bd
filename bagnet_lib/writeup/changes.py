"""What a republished reference run changed: every verdict, the headline accuracies and the drop curve, before → after.

A round that changes the recipe republishes `results/<profile>/`; the previous files stay in git. This module reads
two published results folders (their `summary.json`, `seeds.csv` and `timings.json`) and writes one Markdown page
that sets them side by side, so that "what the new recipe changed" is read from the files, not retold:

- the training settings (the profile the shipped networks trained with, `networks/networks.json`'s `training`);
- the course's time per notebook (`timings.json`);
- both networks' test accuracy, seed 0 and the mean over the seed study's seeds;
- every verdict of seed 0 (claim, reading, measure), and each verdict over the seeds;
- the seed table's numbers (blackout changes, pixel blackout, the loss fit), as means over the seeds;
- the drop curve: the BagNet's mean test accuracy and loss at each fraction of patches dropped.

`python -m bagnet_lib changes --before REV:results/cpu` writes `results/<profile>/changes.md` (its only writer): the
"before" side is read from git at REV (`from_git`), or from a folder (`--before DIR`). The page records where the
"before" side came from, so a test regenerates it from git and compares.
"""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pandas as pd

from bagnet_lib.errors import UserError
from bagnet_lib.io import write_text
from bagnet_lib.nets.shipped import MANIFEST, networks_dir
from bagnet_lib.writeup.seeds import NUMBERS, SEEDS_CSV, verdict_key, verdict_name

CHANGES_MD = "changes.md"
NETWORKS_JSON = (networks_dir(".") / MANIFEST).as_posix()  # the shipped networks' manifest: `training` is their profile
NETWORK_NAMES = {"resnet50": "ResNet-50", "bagnet9": "BagNet-9", "bagnet17": "BagNet-17", "bagnet33": "BagNet-33"}


def _load(folder: Path) -> dict:
    """summary.json, timings.json, seeds.csv and the shipped networks' training settings of one published folder."""
    path = folder / "summary.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: `changes` compares two published results folders (each holding "
                        "summary.json, and timings.json and seeds.csv where the run had them), e.g. results/cpu and the "
                        "previous round's copy of it (`git archive <rev> results/cpu | tar -x -C /tmp/before`).")
    timings = folder / "timings.json"
    seeds_csv = folder / SEEDS_CSV
    seeds = pd.read_csv(seeds_csv, keep_default_na=False, na_values=[""]) if seeds_csv.is_file() else None
    shipped = folder / NETWORKS_JSON
    return {"summary": json.loads(path.read_text()),
            "timings": json.loads(timings.read_text()) if timings.is_file() else {},
            "seeds": seeds,
            "training": json.loads(shipped.read_text()).get("training") if shipped.is_file() else None}


def from_git(spec: str, dest: str | Path, repo: str | Path = ".") -> Path:
    """Write the published files of `spec` ("REV:results/cpu") as git holds them at REV into `dest`; return `dest`."""
    rev, _, folder = spec.partition(":")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "timings.json", SEEDS_CSV, NETWORKS_JSON):
        proc = subprocess.run(["git", "show", f"{rev}:{folder.rstrip('/')}/{name}"], cwd=repo, capture_output=True)
        if proc.returncode == 0:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(proc.stdout)
        elif name == "summary.json":
            raise UserError(f"git cannot show {rev}:{folder}/summary.json in {Path(repo).resolve()} "
                            f"({proc.stderr.decode().strip()}). Pass a revision and folder that git holds, e.g. "
                            "HEAD~1:results/cpu, or a folder with --before DIR.")
    return dest


def _fmt(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    x = round(x, digits) + 0.0  # a change that rounds to zero prints "+0.000", not "-0.000"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _delta(before: float | None, after: float | None, digits: int = 3) -> str:
    if before is None or after is None or math.isnan(before) or math.isnan(after):
        return "—"
    return _fmt(after - before, digits, signed=True)


def _training_section(b: dict | None, a: dict | None) -> list[str]:
    """The training settings that differ (the shipped networks' manifest), or why they cannot be compared."""
    head = [f"Training settings that differ (`{NETWORKS_JSON}`'s `training`: the profile the networks trained with):", ""]
    missing = [side for side, t in (("before", b), ("after", a)) if t is None]
    if missing:
        who = "neither side ships" if len(missing) == 2 else f"the {missing[0]} side ships no"
        return head + [f"- not compared: {who} `{NETWORKS_JSON}` (rounds before issue 36 shipped no networks); "
                       "docs/profiles.md says what each round changed in the profile"]
    diffs = [f"- `{k}`: {json.dumps(b.get(k))} → {json.dumps(a.get(k))}" for k in sorted(set(b) | set(a))
             if b.get(k) != a.get(k)]
    return head + (diffs or ["- none"])


def _timings_section(b: dict, a: dict) -> list[str]:
    names = sorted(set(b) | set(a))
    lines = ["## The course's time (`timings.json`, seconds)", "", "| notebook | before | after | after / before |",
             "| --- | ---: | ---: | ---: |"]
    for n in names:
        tb, ta = b.get(n), a.get(n)
        ratio = f"{ta / tb:.2f}" if tb and ta else "—"
        lines.append(f"| {n} | {_fmt(tb, 0)} | {_fmt(ta, 0)} | {ratio} |")
    if b and a:
        sb, sa = sum(b.values()), sum(a.values())
        lines.append(f"| **total** | **{sb:.0f}** ({sb / 60:.1f} min) | **{sa:.0f}** ({sa / 60:.1f} min) | "
                     f"**{sa / sb:.2f}** |")
    return lines


def _seed_means(seeds: pd.DataFrame | None) -> dict[str, float]:
    if seeds is None:
        return {}
    return {col: float(pd.to_numeric(seeds[col], errors="coerce").mean()) for col in [*NUMBERS, "course_minutes"]
            if col in seeds}


def _seed_accuracies(side: dict, summary_key: str, col: str) -> dict[str, float]:
    """Test accuracy of one network by seed ("0", "1", …; seed 0 from summary.json), and "mean" over the seed table."""
    out = {"0": side["summary"][summary_key]["test"]["acc"]}
    seeds = side["seeds"]
    if seeds is not None and col in seeds:
        accs = pd.to_numeric(seeds[col], errors="coerce")
        out.update({str(int(s)): float(v) for s, v in zip(seeds["seed"], accs) if int(s) != 0})
        out[f"mean ({len(seeds)} seeds)"] = float(accs.mean())
    return out


def _accuracy_section(b: dict, a: dict) -> list[str]:
    lines = ["## Test accuracy", "",
             "Seed 0 is the reference run, the other seeds the seed study's (`seeds.csv`); \"—\": that round has no such seed.",
             "", "| network | seed | before | after | change |", "| --- | --- | ---: | ---: | ---: |"]
    for key_b, key_a, col in (("resnet50", "resnet50", "resnet50_test_acc"),
                              (b["summary"]["bagnet"], a["summary"]["bagnet"], "bagnet_test_acc")):
        sb, sa = _seed_accuracies(b, key_b, col), _seed_accuracies(a, key_a, col)
        name = NETWORK_NAMES.get(key_a, key_a)
        rows = list(dict.fromkeys([*sa, *sb]))
        rows.sort(key=lambda r: (r.startswith("mean"), r))  # the seeds, then the means
        for r in rows:
            lines.append(f"| {name} | {r} | {_fmt(sb.get(r))} | {_fmt(sa.get(r))} | {_delta(sb.get(r), sa.get(r))} |")
    return lines


def _merged(after: list, before: list, claim_of) -> list:
    """The rows of both rounds in the "after" order; a row only "before" has (a verdict split or renamed since) goes
    after the last row of its claim ("(d)"), so that it stands beside what replaced it."""
    rows = list(after)
    for row in before:
        if row not in rows:
            same = [i for i, r in enumerate(rows) if claim_of(r) == claim_of(row)]
            rows.insert(same[-1] + 1 if same else len(rows), row)
    return rows


def _verdict_label(key: tuple[str, str, str], claim: str) -> str:
    _, reading, measure = key
    reading = "compute, BagNet only" if reading == "within" else reading
    return f"{claim} — {reading}" + (f", {measure}" if measure else "")


def _verdicts_section(b: dict, a: dict) -> list[str]:
    before = {verdict_key(v): v for v in b["summary"]["verdicts"]}
    after = {verdict_key(v): v for v in a["summary"]["verdicts"]}
    keys = _merged(list(after), list(before), lambda k: (after.get(k) or before[k])["claim"][:3])
    lines = ["## Seed 0's verdicts", "",
             "A claim, reading or measure present on one side only was added or split this round (\"—\" on the other).",
             "", "| claim — reading | before | after | changed |", "| --- | --- | --- | --- |"]
    for k in keys:
        vb, va = before.get(k), after.get(k)
        claim = (va or vb)["claim"]
        changed = "—" if vb is None or va is None else ("**yes**" if vb["verdict"] != va["verdict"] else "no")
        lines.append(f"| {_verdict_label(k, claim)} | {vb['verdict'] if vb else '—'} | {va['verdict'] if va else '—'} "
                     f"| {changed} |")
    return lines


def _verdict_columns(seeds: pd.DataFrame | None) -> dict[str, str]:
    """Each verdict column of a seed table → its verdicts over the seeds, e.g. "supported (0, 1), inconclusive (2)"."""
    if seeds is None:
        return {}
    out = {}
    for col in (c for c in seeds.columns if c.startswith("verdict_")):
        groups: dict[str, list[str]] = {}
        for seed, v in zip(seeds["seed"], seeds[col].fillna("")):
            groups.setdefault(str(v) or "—", []).append(str(int(seed)))
        out[verdict_name(col)] = "; ".join(f"{v} ({', '.join(s)})" for v, s in groups.items())
    return out


def _seed_verdicts_section(b: dict, a: dict) -> list[str]:
    vb, va = _verdict_columns(b["seeds"]), _verdict_columns(a["seeds"])
    if not vb and not va:
        return []
    lines = ["## Verdicts over the seeds (`seeds.csv`; the seeds in brackets)", "",
             "| claim, reading | before | after |", "| --- | --- | --- |"]
    for name in _merged(list(va), list(vb), lambda n: n[:3]):
        lines.append(f"| {name} | {vb.get(name, '—')} | {va.get(name, '—')} |")
    return lines


def _seed_numbers_section(b: dict, a: dict) -> list[str]:
    mb, ma = _seed_means(b["seeds"]), _seed_means(a["seeds"])
    if not mb and not ma:
        return []
    lines = ["## The seed table's numbers, mean over the seeds", "",
             "Blackout rows are changes of test accuracy (masked − all kept), paired on the same network.", "",
             "| number | before | after | change |", "| --- | ---: | ---: | ---: |"]
    for col, name in NUMBERS.items():
        if col in ("resnet50_test_acc", "bagnet_test_acc"):
            continue  # in the accuracy table
        digits = 4 if col == "loss_null_c" else (1 if col == "bagnet_pareto_points" else 3)
        lines.append(f"| {name} | {_fmt(mb.get(col), digits)} | {_fmt(ma.get(col), digits)} | "
                     f"{_delta(mb.get(col), ma.get(col), digits)} |")
    return lines


def _curve(summary: dict) -> dict[float, dict]:
    return {round(r["drop_frac"], 4): r for r in summary.get("drop_curve", [])
            if r["aggregation"] == "mean" and r["model"] == summary["bagnet"]}


def _drop_curve_section(b: dict, a: dict) -> list[str]:
    cb, ca = _curve(b["summary"]), _curve(a["summary"])
    if not cb and not ca:
        return []
    name = NETWORK_NAMES.get(a["summary"]["bagnet"], a["summary"]["bagnet"])
    lines = [f"## The drop curve (seed 0, {name}, patch logits left out of the mean, mean over the masks)", "",
             "| fraction dropped | acc before | acc after | change | loss before | loss after | change |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for f in sorted(set(cb) | set(ca)):
        rb, ra = cb.get(f, {}), ca.get(f, {})
        acc_b, acc_a, loss_b, loss_a = rb.get("acc_mean"), ra.get("acc_mean"), rb.get("loss_mean"), ra.get("loss_mean")
        lines.append(f"| {f:.2f} | {_fmt(acc_b)} | {_fmt(acc_a)} | {_delta(acc_b, acc_a)} | {_fmt(loss_b)} | "
                     f"{_fmt(loss_a)} | {_delta(loss_b, loss_a)} |")
    # the curve's shape without the starting point: accuracy lost from nothing dropped
    drops = []
    for label, curve in (("before", cb), ("after", ca)):
        if 0.0 in curve:
            top = max(curve)
            drops.append(f"{label}: {curve[0.0]['acc_mean'] - curve[top]['acc_mean']:.3f} lost from 0 to {top:.2f} dropped")
    if drops:
        lines += ["", "Accuracy lost along the curve, " + "; ".join(drops) + "."]
    lines += ["", "Every change is taken before rounding: +0.000 may sit between values that round apart."]
    return lines


def compare_published(before: str | Path, after: str | Path, before_label: str, after_label: str) -> str:
    """The Markdown page comparing two published results folders (see the module docstring)."""
    b, a = _load(Path(before)), _load(Path(after))
    sb, sa = b["summary"], a["summary"]
    if (sb["profile"], sb["bagnet"]) != (sa["profile"], sa["bagnet"]):
        raise UserError(f"{before} is profile {sb['profile']!r} with {sb['bagnet']}, {after} is profile "
                        f"{sa['profile']!r} with {sa['bagnet']}: `changes` compares two rounds of the same course. "
                        "Pass the previous round's folder of the same profile.")
    setting_changes = [f"- `{k}`: {json.dumps(sb['setting'].get(k))} → {json.dumps(sa['setting'].get(k))}"
                       for k in sorted(set(sb["setting"]) | set(sa["setting"]))
                       if sb["setting"].get(k) != sa["setting"].get(k)]
    parts = [[f"# What this round changed in the `{sa['profile']}` reference run", "",
              "<!-- generated by `python -m bagnet_lib changes`; do not edit -->", "",
              f"- before: `{before_label}`", f"- after: `{after_label}`", "",
              "Settings that differ in `summary.json`'s `setting` (what the write-up reports of the run):",
              "", *(setting_changes or ["- none"])],
             _training_section(b["training"], a["training"]), _timings_section(b["timings"], a["timings"]), _accuracy_section(b, a), _verdicts_section(b, a),
             _seed_verdicts_section(b, a), _seed_numbers_section(b, a), _drop_curve_section(b, a)]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


def write_changes(before: str | Path, after: str | Path, before_label: str, after_label: str,
                  out: str | Path | None = None) -> Path:
    """Write the comparison to `out` (default: AFTER/changes.md) and return its path."""
    out = Path(out) if out is not None else Path(after) / CHANGES_MD
    return write_text(out, compare_published(before, after, before_label, after_label))
