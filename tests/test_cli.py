"""The command line as a user meets it: clear one-paragraph errors, and the whole pipeline end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "BAGNET_DATA"}
    full_env.update({"BAGNET_NO_DOWNLOAD": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "bagnet_lib", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=600)


def _assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")  # one paragraph, after any progress bars
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_missing_data_is_one_paragraph_naming_the_paths(tmp_path):
    proc = cli("data", "audit", "--data-dir", str(tmp_path / "nowhere"), cwd=tmp_path)
    _assert_user_error(proc, "nowhere", "BAGNET_DATA", "data download", "synthetic")


def test_unknown_model_and_bad_manifest_are_user_errors(tmp_path, synthetic_root):
    _assert_user_error(cli("train", "--model", "vgg", "--profile", "smoke", "--run-dir", str(tmp_path / "r"),
                           "--data-dir", str(synthetic_root)), "vgg", "bagnet33")
    bad = tmp_path / "m.csv"
    bad.write_text("path,split\nrose/nothere.jpg,train\n")
    _assert_user_error(cli("data", "split", "--data-dir", str(synthetic_root), "--out", str(tmp_path / "s.csv"),
                           "--manifest", str(bad)), "m.csv", "not under")


def test_data_split_and_audit_json(tmp_path, synthetic_root):
    out = tmp_path / "split.csv"
    proc = cli("data", "split", "--data-dir", str(synthetic_root), "--out", str(out), "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == ["path", "label", "split"] and len(df) == 80
    proc = cli("data", "audit", "--data-dir", str(synthetic_root), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout carries the JSON alone
    assert [(p["path"], p["kind"]) for p in report["problems"]] == [("synthetic.json", "not_image")]  # its marker
    assert report["class_counts"]["tulip"] == 16


def test_smoke_pipeline_end_to_end(tmp_path, synthetic_root):
    run = tmp_path / "run"
    proc = cli("reproduce", "--profile", "smoke", "--run-dir", str(run), "--data-dir", str(synthetic_root),
               "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[reproduce] train bagnet33" in proc.stdout
    summary = json.loads((run / "results" / "summary.json").read_text())
    for model in ("resnet50", "bagnet33"):
        for part in ("train", "test"):
            assert 0.0 <= summary[model][part]["acc"] <= 1.0 and summary[model][part]["loss"] > 0
        lo, hi = summary[model]["test"]["acc_ci"]
        assert lo <= summary[model]["test"]["acc"] <= hi
    settings = {(b["kind"], b["drop_frac"]) for b in summary["blackout"]}
    assert {("checkerboard", 0.5), ("raster", 0.5), ("random", 0.25), ("random", 0.5), ("random", 0.75),
            ("channel_random", 0.5), ("pixel", 0.5)} <= settings
    runs = pd.read_csv(run / "results" / "blackout_runs.csv")
    curve = runs[runs["experiment"] == "curve"]
    assert sorted(curve["drop_frac"].unique()) == pytest.approx([round(0.05 * i, 2) for i in range(20)])
    report = (run / "REPORT.md").read_text()
    assert "| ResNet-50 |" in report and "0.9093" in report
    # idempotent: a second call reuses everything (training resumes at its end)
    again = cli("reproduce", "--profile", "smoke", "--run-dir", str(run), "--data-dir", str(synthetic_root),
                "--no-progress")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "results" / "summary.json").read_text())["bagnet33"] == summary["bagnet33"]
    # a different profile in the same run directory is refused, not mixed in
    _assert_user_error(cli("train", "--model", "bagnet33", "--profile", "cpu", "--run-dir", str(run)), "smoke")


def test_without_any_dataset_the_main_job_runs_on_synthetic_data_and_says_so(tmp_path):
    proc = cli("reproduce", "--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("SYNTHETIC") >= 2  # said when it starts and when it ends
    assert (tmp_path / "data" / "synthetic" / "synthetic.json").is_file()
    assert "SYNTHETIC-DATA RUN" in (tmp_path / "run" / "REPORT.md").read_text()
    assert json.loads((tmp_path / "run" / "results" / "summary.json").read_text())["synthetic_data"] is True
