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
    full_env = {k: v for k, v in os.environ.items() if k not in ("BAGNET_DATA", "BAGNET_MANIFEST")}
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_cache_and_sweep_commands(tmp_path, synthetic_root):
    run = tmp_path / "run"
    common = ("--profile", "smoke", "--run-dir", str(run), "--data-dir", str(synthetic_root), "--no-progress")
    proc = cli("train", "--model", "bagnet33", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bagnet33: best epoch 1, test acc" in proc.stdout
    metrics = json.loads((run / "results" / "bagnet33_metrics.json").read_text())
    assert 0 <= metrics["test"]["acc"] <= 1 and (run / "checkpoints" / "bagnet33_best.pt").is_file()
    proc = cli("sweep", "--kinds", "random", "raster", "--drop-fracs", "0.25", "0.5", "--seeds", "4", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(run / "results" / "sweep.csv")
    assert len(df) == 2 * (2 * 4 + 1) and set(df["aggregation"]) == {"mean", "zero"}
    assert (run / "cache" / "bagnet33_test_logits.pt").is_file()
    # the same run directory with another profile is refused, not mixed in
    _assert_user_error(cli("train", "--model", "bagnet33", "--profile", "cpu", "--run-dir", str(run)), "smoke")


@pytest.mark.slow
def test_without_any_dataset_the_main_job_falls_back_to_synthetic_data_and_says_so(tmp_path, monkeypatch, capsys):
    from bagnet_lib.course import pipeline, runner
    from bagnet_lib.data import folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "PROJECT_ROOT", tmp_path)  # the synthetic data goes to <project>/data/synthetic
    monkeypatch.setattr(folder, "DEFAULT_DATA_DIR", tmp_path / "data" / "flowers")
    monkeypatch.delenv("BAGNET_DATA", raising=False)
    monkeypatch.delenv("BAGNET_MANIFEST", raising=False)
    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    runner.reproduce("smoke", tmp_path / "run", notebooks=runner.NOTEBOOKS[:1])
    out = capsys.readouterr().out
    assert out.count("SYNTHETIC") >= 2  # said when it starts and when it ends
    assert (tmp_path / "data" / "synthetic" / "synthetic.json").is_file()
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["synthetic"] is True and meta["data_dir"] == str((tmp_path / "data" / "synthetic").resolve())
    assert (tmp_path / "run" / "figures" / "01_split_counts.png").is_file()
