"""The seed study: one row per training seed from each run's summary.json, the spread over seeds, the refusals,
claim (a) citing the spread, and the report's seed table. The summaries are copies of the committed reference
run's results/cpu/summary.json with a few numbers changed (the course itself runs in test_notebooks.py)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import scipy.stats

from bagnet_lib.errors import UserError
from bagnet_lib.writeup import seeds as S
from bagnet_lib.writeup import verdicts as V
from bagnet_lib.writeup.readme import results_block
from bagnet_lib.writeup.report import render_report
from tests.conftest import ROOT

REFERENCE = json.loads((ROOT / "results" / "cpu" / "summary.json").read_text())


def _summary(seed: int, resnet: float, bagnet: float, patch25: float, verdict_c: str = "supported") -> dict:
    """The reference summary with this seed's test accuracies, gap, patch-25 % change and (c) patch verdict."""
    s = copy.deepcopy(REFERENCE)
    s.pop("seeds", None)  # the published run has its own seed study; each test adds the one it needs
    b = s["bagnet"]
    s["seed"], s["resnet50"]["test"]["acc"], s[b]["test"]["acc"] = seed, resnet, bagnet
    for v in s["verdicts"]:
        if v["claim"].startswith("(a)"):
            v["numbers"].update(diff=bagnet - resnet, ci=[bagnet - resnet - 0.03, bagnet - resnet + 0.03])
        if v["claim"].startswith("(c)") and v["reading"] == "patch":
            v["verdict"] = verdict_c
    for r in s["table1"]:
        if r["reading"] == "patch" and r.get("kind") == "random" and r["drop_frac"] == 0.25:
            r["diff"] = patch25
    return s


def _run_dir(tmp_path, name: str, summary: dict, timings: dict | None = None):
    d = tmp_path / name
    (d / "results").mkdir(parents=True)
    (d / "results" / "summary.json").write_text(json.dumps(summary))
    if timings:
        (d / "results" / "timings.json").write_text(json.dumps(timings))
    return d


def _three_seeds(tmp_path):
    base = _run_dir(tmp_path, "cpu", _summary(0, 0.85, 0.74, 0.007), {"02": 600.0, "03": 2400.0})
    dirs = [_run_dir(tmp_path, "cpu-seed1", _summary(1, 0.83, 0.75, -0.004, "inconclusive")),
            _run_dir(tmp_path, "cpu-seed2", _summary(2, 0.86, 0.70, 0.010))]
    return base, dirs


def test_seed_runs_sit_beside_the_reference_run(tmp_path):
    assert S.seed_run_dir(tmp_path / "runs" / "cpu", 2) == tmp_path / "runs" / "cpu-seed2"


def test_the_table_has_one_row_per_seed_and_the_spread_is_the_t_interval_over_seeds(tmp_path):
    base, dirs = _three_seeds(tmp_path)
    df = S.write_seeds(base, dirs)
    assert (base / "results" / "seeds.csv").is_file()
    back = S.read_seeds(base)
    assert back["seed"].tolist() == [0, 1, 2] and back["run"].tolist() == ["cpu", "cpu-seed1", "cpu-seed2"]
    assert np.allclose(back["gap"], [0.74 - 0.85, 0.75 - 0.83, 0.70 - 0.86])
    assert np.allclose(back["patch_random25_change"], [0.007, -0.004, 0.010])
    assert back["course_minutes"].iloc[0] == pytest.approx(50.0) and np.isnan(back["course_minutes"].iloc[1])
    # the numbers the reference summary has are carried over unchanged (seed 0's pixel change, (d)'s constant)
    ref_d = next(v for v in REFERENCE["verdicts"] if v["claim"].startswith("(d)"))["numbers"]["mean_fit"]["c"]
    assert df["loss_null_c"].iloc[0] == pytest.approx(ref_d)
    sp = S.spread_over_seeds(back)
    gaps = back["gap"].to_numpy()
    half = scipy.stats.t.ppf(0.975, 2) * gaps.std(ddof=1) / np.sqrt(3)
    assert sp["n"] == 3 and sp["mean"]["gap"] == pytest.approx(gaps.mean())
    assert sp["t_ci"]["gap"] == pytest.approx([gaps.mean() - half, gaps.mean() + half])
    assert sp["sd"]["gap"] == pytest.approx(gaps.std(ddof=1))
    assert sp["verdicts_differ"] == {"verdict_c_patch": {0: "supported", 1: "inconclusive", 2: "supported"}}
    assert sp["verdicts_shared"]["verdict_e_compute"] == "not supported"


def test_runs_of_another_course_a_repeated_seed_or_an_unfinished_run_are_refused(tmp_path):
    base, dirs = _three_seeds(tmp_path)
    other = _summary(3, 0.8, 0.7, 0.0)
    other["setting"]["image_size"] = REFERENCE["setting"]["image_size"] + 32  # another course: another test size
    odd = _run_dir(tmp_path, "cpu-seed3", other)
    with pytest.raises(UserError, match=r"cpu-seed3 is not the same course as .*`setting`"):
        S.collect([base, odd])
    twin = _run_dir(tmp_path, "cpu-twin", _summary(1, 0.8, 0.7, 0.0))
    with pytest.raises(UserError, match="Training seed 1 appears twice"):
        S.collect([base, dirs[0], twin])
    (tmp_path / "cpu-seed4").mkdir()
    with pytest.raises(UserError, match=r"cpu-seed4/results/summary.json does not exist.*--resume"):
        S.collect([base, tmp_path / "cpu-seed4"])
    assert not (base / "results" / "seeds.csv").exists()  # nothing written by a refused study


def test_claim_a_cites_the_spread_over_seeds_and_a_pretrained_verdict_needs_both_intervals():
    resnet = np.zeros(400, bool)
    resnet[:320] = True
    gaps = {0: -0.11, 1: -0.08, 2: -0.14}
    v = V.claim_a(resnet, resnet.copy(), pretrained=False, seed_gaps=gaps)
    assert "over 3 training seeds (seed 0: -0.110, seed 1: -0.080, seed 2: -0.140)" in v["evidence"]
    lo, hi = v["numbers"]["seed_ci"]
    assert lo < -0.11 < hi and "with 3 training seeds" in v["caveat"]
    assert "with one seed" in V.claim_a(resnet, resnet.copy(), pretrained=False)["caveat"]
    # pretrained: seed 0's predictions are identical (image interval [0, 0]); the verdict also needs the seeds'
    assert V.claim_a(resnet, resnet.copy(), pretrained=True, seed_gaps={0: 0.0, 1: -0.01, 2: 0.01})["verdict"] == \
        "supported"
    worse = resnet.copy()
    worse[:120] = False  # 0.80 → 0.50
    assert V.claim_a(resnet, worse, pretrained=True, seed_gaps={0: -0.3, 1: -0.28, 2: -0.32})["verdict"] == \
        "not supported"
    wide = V.claim_a(resnet, resnet.copy(), pretrained=True, seed_gaps={0: 0.0, 1: -0.06, 2: 0.02})
    assert wide["verdict"] == "inconclusive" and "both intervals (test images, seeds)" in wide["evidence"]


def test_the_report_shows_the_seed_table_under_claim_a_and_says_so_in_its_limitations(tmp_path):
    base, dirs = _three_seeds(tmp_path)
    S.write_seeds(base, dirs)
    summary = {**_summary(0, 0.85, 0.74, 0.007), "seeds": S.seeds_summary(base)}
    text = render_report(summary)
    head = "### How much is luck? 3 training seeds"
    assert text.index("## Claim (a)") < text.index(head) < text.index("## Claims (b) and (c)")
    table = text[text.index(head):text.index("## Claims (b) and (c)")]
    assert "| 1 | 0.830 | 0.750 | -0.080 | -0.004 |" in table and "| **mean** |" in table
    assert "| 95% CI (t, seeds) |" in table and "Verdicts that differ: (c) patch: seed 0 supported, seed 1 " \
                                                "inconclusive, seed 2 supported." in table
    assert "3 training seeds per network" in text and "make seeds" not in text
    block = results_block(summary)  # the README's results block carries the same table
    assert "The seed study: 3 training seeds" in block and "| **mean** |" in block
    plain = render_report(_summary(0, 0.85, 0.74, 0.007))
    assert "How much is luck" not in plain and "One training run per network" in plain and "`make seeds`" in plain
    assert "seed study" not in results_block(_summary(0, 0.85, 0.74, 0.007))


def test_a_seed_table_left_from_an_earlier_training_is_refused(tmp_path):
    base, dirs = _three_seeds(tmp_path)
    S.write_seeds(base, dirs)
    now = {"seed": 0, "resnet50_test_acc": 0.85, "bagnet_test_acc": 0.74}
    assert S.seeds_summary(base, now)["spread"]["n"] == 3
    with pytest.raises(UserError, match=r"seeds.csv does not describe this run any more.*make seeds"):
        S.seeds_summary(base, {**now, "bagnet_test_acc": 0.70})
    with pytest.raises(UserError, match="its row for seed 5"):
        S.seeds_summary(base, {**now, "seed": 5})
    assert S.seeds_summary(tmp_path / "no-study", now) is None
