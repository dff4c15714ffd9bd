"""The before/after page of a republished run (writeup/changes.py): it reports exactly what differs, reads the
previous round from git, refuses mismatched folders in one paragraph, and the published page regenerates."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bagnet_lib.errors import UserError
from bagnet_lib.writeup.changes import CHANGES_MD, _merged, compare_published, from_git

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "results" / "cpu"
FILES = ("summary.json", "timings.json", "seeds.csv")


def _copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in FILES:
        shutil.copy(PUBLISHED / name, dest / name)
    return dest


def _row(page: str, start: str) -> str:
    rows = [line for line in page.splitlines() if line.startswith(start)]
    assert len(rows) == 1, (start, rows)
    return rows[0]


def test_identical_folders_change_nothing(tmp_path):
    page = compare_published(_copy(tmp_path / "a"), _copy(tmp_path / "b"), "a", "b")
    verdict_rows = [line for line in page.split("## Seed 0's verdicts")[1].split("##")[0].splitlines()
                    if line.startswith("| (")]
    assert verdict_rows and all(line.endswith("| no |") for line in verdict_rows)
    assert "**yes**" not in page
    assert "- none" in page  # no setting differs
    assert "| **1.00** |" in page  # total time ratio


def test_every_kind_of_change_is_reported(tmp_path):
    before, after = _copy(tmp_path / "before"), _copy(tmp_path / "after")
    summary = json.loads((after / "summary.json").read_text())
    flipped = summary["verdicts"][1]
    old_verdict = flipped["verdict"]
    flipped["verdict"] = "a verdict nobody wrote"
    summary["verdicts"].append({**summary["verdicts"][0], "claim": "(z) a claim added this round", "verdict": "new"})
    for r in summary["drop_curve"]:
        if r["aggregation"] == "mean" and abs(r["drop_frac"] - 0.5) < 1e-9:
            r["acc_mean"] += 0.1
        if r["aggregation"] == "mean" and abs(r["drop_frac"] - 0.25) < 1e-9:
            r["acc_mean"] -= 1e-5  # rounds to no change: printed "+0.000", never "-0.000"
    summary["setting"]["epochs"] = {"resnet50": 1, "bagnet33": 2}
    (after / "summary.json").write_text(json.dumps(summary))
    timings = json.loads((after / "timings.json").read_text())
    (after / "timings.json").write_text(json.dumps({k: v / 2 for k, v in timings.items()}))
    seeds = pd.read_csv(after / "seeds.csv", keep_default_na=False, na_values=[""])
    seeds.loc[seeds["seed"] == 2, "verdict_a_model"] = "changed for seed 2"
    seeds.loc[seeds["seed"] == 1, "resnet50_test_acc"] += 0.02
    seeds.to_csv(after / "seeds.csv", index=False)

    page = compare_published(before, after, "git X:results/cpu", "results/cpu")
    label = f"{flipped['claim']} — {flipped['reading']}"
    assert _row(page, f"| {label} |") == f"| {label} | {old_verdict} | a verdict nobody wrote | **yes** |"
    assert _row(page, "| (z) a claim added this round").endswith("| — | new | — |")
    assert page.count("**yes**") == 1
    assert "- `epochs`:" in page and '{"resnet50": 1, "bagnet33": 2}' in page
    assert "| **0.50** |" in page  # every notebook took half the time
    curve_row = _row(page, "| 0.50 |")
    assert re.search(r"\| \+0\.100 \|", curve_row), curve_row
    assert _row(page, "| 0.25 |").count("+0.000") == 2  # the other fractions unchanged
    assert "-0.000" not in page
    assert "changed for seed 2 (2)" in _row(page, "| (a) model |")
    assert _row(page, "| ResNet-50 | 1 |").endswith("| +0.020 |")
    assert _row(page, f"| ResNet-50 | mean ({len(seeds)} seeds) |").endswith(f"| {0.02 / len(seeds):+.3f} |")
    assert _row(page, "| BagNet-33 | 1 |").endswith("| +0.000 |")
    assert "- not compared: neither side ships `networks/networks.json`" in page


def test_a_verdict_split_since_stands_beside_what_replaced_it():
    after = ["(a) model", "(d) patch, loss", "(d) patch, accuracy", "(e) compute"]
    before = ["(a) model", "(d) patch", "(e) compute", "(f) dropped"]
    assert _merged(after, before, lambda n: n[:3]) == [
        "(a) model", "(d) patch, loss", "(d) patch, accuracy", "(d) patch", "(e) compute", "(f) dropped"]


def _ship_training(folder: Path, **training) -> None:
    (folder / "networks").mkdir()
    (folder / "networks" / "networks.json").write_text(json.dumps({"profile": "cpu", "training": training}))


def test_the_training_settings_are_compared_where_both_rounds_shipped_networks(tmp_path):
    before, after = _copy(tmp_path / "before"), _copy(tmp_path / "after")
    _ship_training(after, lr=0.05, val_every=5, norm_weight_decay=False)
    page = compare_published(before, after, "b", "a")
    assert "- not compared: the before side ships no `networks/networks.json`" in page
    _ship_training(before, lr=0.05, val_every=1, norm_weight_decay=True)
    page = compare_published(before, after, "b", "a")
    section = page.split("Training settings that differ")[1].split("##")[0]
    assert [line for line in section.splitlines() if line.startswith("- ")] == [
        "- `norm_weight_decay`: true → false", "- `val_every`: 1 → 5"]
    assert "`lr`" not in section  # unchanged settings are not listed


def test_bad_folders_are_one_paragraph(tmp_path):
    with pytest.raises(UserError, match="summary.json does not exist") as e:
        compare_published(tmp_path / "nowhere", _copy(tmp_path / "b"), "a", "b")
    assert "\n" not in str(e.value)
    other = _copy(tmp_path / "other")
    summary = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**summary, "profile": "smoke"}))
    with pytest.raises(UserError, match="compares two rounds of the same course"):
        compare_published(other, tmp_path / "b", "a", "b")


def _git_holds(rev: str) -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=REPO, capture_output=True).returncode == 0


def test_from_git_reads_the_committed_files(tmp_path):
    if not _git_holds("HEAD"):
        pytest.skip("not a git checkout: nothing to read from git")
    dest = from_git("HEAD:results/cpu", tmp_path / "head")
    committed = subprocess.run(["git", "show", "HEAD:results/cpu/summary.json"], cwd=REPO, capture_output=True,
                               check=True).stdout
    assert (dest / "summary.json").read_bytes() == committed
    with pytest.raises(UserError, match="git cannot show"):
        from_git("HEAD:results/no-such-profile", tmp_path / "none")


def test_the_published_page_regenerates_from_git(tmp_path):
    page_path = PUBLISHED / CHANGES_MD
    if not page_path.is_file():
        pytest.skip(f"{page_path.relative_to(REPO)} is not published yet (it comes with a republished reference run)")
    page = page_path.read_text()
    m = re.search(r"- before: `git ([0-9a-f]+):(results/\w+)`", page)
    assert m, "the published page must name the git revision its 'before' side came from"
    if not _git_holds(m.group(1)):
        pytest.skip(f"this clone does not hold revision {m.group(1)} (a shallow clone)")
    before = from_git(f"{m.group(1)}:{m.group(2)}", tmp_path / "before", REPO)
    assert compare_published(before, PUBLISHED, f"git {m.group(1)}:{m.group(2)}", "results/cpu") == page
