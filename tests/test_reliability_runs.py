"""Interrupted and repeated runs: SIGKILL mid-epoch resumes to the same result; same seed, same numbers."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bagnet_lib.errors import UserError
from bagnet_lib.profiles import get_profile

TRAIN_SCRIPT = r"""
import sys, torch
from bagnet_lib.data.split import make_split
from bagnet_lib.data.tensors import load_split_tensors
from bagnet_lib.models import build_model
from bagnet_lib.profiles import get_profile
from bagnet_lib.train import train_model
root, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
df = make_split(root, seed=0)
classes = sorted(df["label"].unique())
train, val = (load_split_tensors(root, df, s, classes, 48, progress=False) for s in ("train", "val"))
profile = get_profile("smoke", image_size=48, width=0.125, epochs=4, batch_size=4, lr=0.02, schedule="cosine")
torch.manual_seed(3)
model = build_model("bagnet33", len(classes), width=0.125)
train_model(model, train, val, profile, out, "bag", seed=3, progress=False)
torch.save(model.state_dict(), out + "/final.pt")
"""


def _train(root: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(root), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(synthetic_root, tmp_path):
    straight = _train(synthetic_root, tmp_path / "a")
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    victim = _train(synthetic_root, tmp_path / "b")
    history = tmp_path / "b" / "bag_history.csv"
    deadline = time.time() + 300
    while not (history.is_file() and len(pd.read_csv(history)) >= 1):  # epoch 1 is on disk …
        assert time.time() < deadline and victim.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.3)  # … and epoch 2 has started
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert not (tmp_path / "b" / "final.pt").exists()
    done = len(pd.read_csv(history))
    assert 1 <= done < 4
    assert not list((tmp_path / "b").glob(".*.tmp"))  # no half-written checkpoint survives the kill … or if one
    resumed = _train(synthetic_root, tmp_path / "b")  # … does, it is never read: same command, resumed
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = torch.load(tmp_path / "a" / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "final.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "bag_history.csv").drop(columns="seconds"),
                                  pd.read_csv(history).drop(columns="seconds"))


def test_a_truncated_training_checkpoint_is_a_clear_error(synthetic_root, tmp_path):
    from bagnet_lib.data.split import make_split
    from bagnet_lib.data.tensors import load_split_tensors
    from bagnet_lib.models import build_model
    from bagnet_lib.train import train_model

    df = make_split(synthetic_root, seed=0)
    classes = sorted(df["label"].unique())
    train, val = (load_split_tensors(synthetic_root, df, s, classes, 48, progress=False) for s in ("train", "val"))
    profile = get_profile("smoke", image_size=48, width=0.125, epochs=1)
    (tmp_path / "bag_last.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match=r"bag_last\.pt.*(truncated|corrupted)"):
        train_model(build_model("bagnet33", 5, width=0.125), train, val, profile, tmp_path, "bag", progress=False)


WALL_CLOCK = {"minutes", "notebook_seconds", "train_seconds", "wall_seconds", "seconds"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in WALL_CLOCK and k != "data_dir"}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _smoke_pipeline(run_dir: Path, data: Path, seed: int) -> dict:
    from bagnet_lib import pipeline, report

    run = pipeline.prepare_run(run_dir, "smoke", data, None, seed, progress=False)
    for model in ("resnet50", "bagnet33"):
        pipeline.train_step(run, model, progress=False)
    pipeline.blackout_step(run, progress=False)
    return report.build_summary(run)


def test_same_seed_same_results_other_seed_other_masks(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    torch.set_num_threads(1)
    one = _smoke_pipeline(tmp_path / "one", synthetic_root, seed=0)
    two = _smoke_pipeline(tmp_path / "two", synthetic_root, seed=0)
    assert json.dumps(_strip(one), sort_keys=True) == json.dumps(_strip(two), sort_keys=True)
    runs_one = pd.read_csv(tmp_path / "one" / "results" / "blackout_runs.csv")
    runs_two = pd.read_csv(tmp_path / "two" / "results" / "blackout_runs.csv")
    pd.testing.assert_frame_equal(runs_one, runs_two)
    three = _smoke_pipeline(tmp_path / "three", synthetic_root, seed=1)
    runs_three = pd.read_csv(tmp_path / "three" / "results" / "blackout_runs.csv")
    random_one = runs_one[runs_one["kind"] == "random"]
    random_three = runs_three[runs_three["kind"] == "random"]
    assert len(random_one) == len(random_three)
    assert not set(random_one["seed"]) & set(random_three["seed"])  # another seed draws other random masks
    split_one = pd.read_csv(tmp_path / "one" / "split.csv")
    split_three = pd.read_csv(tmp_path / "three" / "split.csv")
    assert not split_one.equals(split_three)  # the seed also draws the split
    assert _strip(three) != _strip(one)
