"""Interrupted and repeated runs: SIGKILL mid-epoch resumes to the same result; same seed, same numbers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bagnet_lib.errors import UserError
from bagnet_lib.nets.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]

EPOCHS, STEPS_PER_EPOCH = 3, 6  # 16 synthetic images per class: 55 training images, batch 8


def train_once(root: str | Path, out: str | Path) -> None:
    """A tiny BagNet-33 training run into `out` (resumes from `out` like any run), then `out/final.pt`."""
    from bagnet_lib.data.split import make_split
    from bagnet_lib.data.tensors import load_split_tensors
    from bagnet_lib.nets.models import build_model
    from bagnet_lib.nets.train import train_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the victim runs with 1 thread too: the same kernels, the same rounding
    try:
        df = make_split(root, seed=0)
        classes = sorted(df["label"].unique())
        train, val = (load_split_tensors(root, df, s, classes, 48, progress=False) for s in ("train", "val"))
        profile = get_profile("smoke", image_size=48, width=0.125, epochs=EPOCHS, batch_size=8, lr=0.02,
                              schedule="cosine")
        torch.manual_seed(3)
        model = build_model("bagnet33", len(classes), width=0.125)
        train_model(model, train, val, profile, out, "bag", seed=3, progress=False)
        torch.save(model.state_dict(), Path(out) / "final.pt")
    finally:
        torch.set_num_threads(threads)


def _victim(root: Path, out: Path, fault: str) -> subprocess.CompletedProcess:
    """`train_once` in a new process with BAGNET_FAULT=`fault`: it kills itself (SIGKILL) at that named point."""
    env = {**os.environ, "BAGNET_FAULT": fault}
    code = f"from tests.test_reliability_runs import train_once; train_once({str(root)!r}, {str(out)!r})"
    # no time limit: a loaded machine may be slow, and a hang would be a bug the suite's own timeout shows
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    train_once(synthetic_root, out)
    assert len(pd.read_csv(out / "bag_history.csv")) == EPOCHS
    return out


# Every gap between two writes of an epoch (best → last → history), half-way through each write, between
# two batches, and the last epoch (where a resumed run has nothing left to train). `on_disk` is the number
# of epochs `bag_last.pt` holds when the process dies; `stale` the temporary file the kill leaves behind.
FAULTS = {
    "after_batch#8": dict(on_disk=1, stale=None),  # the 2nd batch of epoch 2
    "mid_write:bag_best.pt#1": dict(on_disk=0, stale="bag_best.pt"),
    "after_best#1": dict(on_disk=0, stale=None),
    "mid_write:bag_last.pt#2": dict(on_disk=1, stale="bag_last.pt"),
    "after_last#2": dict(on_disk=2, stale=None),  # bag_history.csv is one epoch behind bag_last.pt
    "mid_write:bag_history.csv#2": dict(on_disk=2, stale="bag_history.csv"),
    "after_epoch#2": dict(on_disk=2, stale=None),
    "after_last#3": dict(on_disk=3, stale=None),  # training is finished, the history is not
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_kill_at_each_named_point_resumes_to_the_uninterrupted_result(fault, uninterrupted, synthetic_root,
                                                                        tmp_path, capsys):
    expect = FAULTS[fault]
    killed = _victim(synthetic_root, tmp_path, fault)
    assert killed.returncode == -signal.SIGKILL, (fault, killed.returncode, killed.stderr)
    assert not (tmp_path / "final.pt").exists()
    on_disk = torch.load(tmp_path / "bag_last.pt", weights_only=True)["epoch"] if expect["on_disk"] else 0
    assert on_disk == expect["on_disk"]
    stale = sorted(p.name for p in tmp_path.glob(".*.tmp"))
    if expect["stale"]:
        assert len(stale) == 1 and stale[0].startswith(f".{expect['stale']}."), stale
    else:
        assert not stale
    train_once(synthetic_root, tmp_path)  # the same run again, here, with no fault armed: it resumes
    assert ("[resume] removed" in capsys.readouterr().out) == bool(expect["stale"])
    assert not list(tmp_path.glob(".*.tmp"))  # leftovers removed, never read
    a = torch.load(uninterrupted / "final.pt", weights_only=True)
    b = torch.load(tmp_path / "final.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"weights differ after {fault}"
    for name in ("bag_best.pt", "bag_last.pt"):
        sa, sb = (torch.load(d / name, weights_only=True)["model"] for d in (uninterrupted, tmp_path))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{name} differs after {fault}"
    pd.testing.assert_frame_equal(pd.read_csv(uninterrupted / "bag_history.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "bag_history.csv").drop(columns="seconds"))


def test_a_planted_temporary_file_is_removed_and_never_read(synthetic_root, tmp_path, capsys):
    """A stale `.bag_last.pt.*.tmp` (garbage bytes) does not stop or change a fresh run; it is deleted, with a note."""
    from bagnet_lib.io import atomic_write, remove_stale_temporaries

    planted = [tmp_path / ".bag_last.pt.x1y2z3.tmp", tmp_path / ".bag_history.csv.abc.tmp"]
    for p in planted:
        p.write_bytes(b"PK\x03\x04 half a checkpoint")
    other = tmp_path / ".someone_else.pt.abc.tmp"  # not a temporary of the files being written: left alone
    other.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path / "bag_last.pt") + remove_stale_temporaries(tmp_path / "bag_history.csv")
    assert sorted(removed) == sorted(planted) and not any(p.exists() for p in planted) and other.exists()
    assert capsys.readouterr().out.count("[resume] removed") == 2
    atomic_write(tmp_path / "bag_last.pt", lambda p: p.write_bytes(b"new"))
    assert (tmp_path / "bag_last.pt").read_bytes() == b"new" and not list(tmp_path.glob(".bag_last.pt.*.tmp"))


def test_fault_points_fire_on_the_named_call_only(monkeypatch):
    from bagnet_lib import faults

    monkeypatch.setattr(faults, "_hits", faults.Counter())
    monkeypatch.setenv("BAGNET_FAULT", "after_last#3")
    assert [faults.armed("after_last") for _ in range(4)] == [False, False, True, False]
    assert not faults.armed("after_best")
    monkeypatch.setenv("BAGNET_FAULT", "after_best")  # no count: the first call
    assert faults.armed("after_best")
    monkeypatch.delenv("BAGNET_FAULT")
    assert not faults.armed("after_best")


def test_a_truncated_training_checkpoint_is_a_clear_error(synthetic_root, tmp_path):
    from bagnet_lib.data.split import make_split
    from bagnet_lib.data.tensors import load_split_tensors
    from bagnet_lib.nets.models import build_model
    from bagnet_lib.nets.train import train_model

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
    from bagnet_lib.blackout import study
    from bagnet_lib.course import pipeline
    from bagnet_lib.writeup import summary

    run = pipeline.prepare_run(run_dir, "smoke", data, None, seed, progress=False)
    for model in ("resnet50", "bagnet33"):
        pipeline.train_step(run, model, progress=False)
    study.blackout_step(run, progress=False)
    return summary.build_summary(run)


def _blackout_runs(run_dir: Path) -> pd.DataFrame:
    return pd.concat([pd.read_csv(f) for f in sorted((run_dir / "results").glob("blackout_*.csv"))], ignore_index=True)


@pytest.mark.slow
def test_same_seed_same_results_other_seed_other_masks(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    torch.set_num_threads(1)
    one = _smoke_pipeline(tmp_path / "one", synthetic_root, seed=0)
    two = _smoke_pipeline(tmp_path / "two", synthetic_root, seed=0)
    assert json.dumps(_strip(one), sort_keys=True) == json.dumps(_strip(two), sort_keys=True)
    runs_one = _blackout_runs(tmp_path / "one")
    runs_two = _blackout_runs(tmp_path / "two")
    pd.testing.assert_frame_equal(runs_one, runs_two)
    three = _smoke_pipeline(tmp_path / "three", synthetic_root, seed=1)
    runs_three = _blackout_runs(tmp_path / "three")
    random_one = runs_one[runs_one["kind"] == "random"]
    random_three = runs_three[runs_three["kind"] == "random"]
    assert len(random_one) == len(random_three)
    assert not set(random_one["seed"]) & set(random_three["seed"])  # another seed draws other random masks
    split_one = pd.read_csv(tmp_path / "one" / "split.csv")
    split_three = pd.read_csv(tmp_path / "three" / "split.csv")
    assert not split_one.equals(split_three)  # the seed also draws the split
    assert _strip(three) != _strip(one)


def test_an_atomic_write_leaves_the_permissions_a_plain_write_would(tmp_path):
    """Not mkstemp's 0o600: a new file gets 0o666 less the umask (results readable by the team on a shared machine),
    a rewritten file keeps its own mode."""
    import os

    from bagnet_lib.io import atomic_write

    plain = tmp_path / "plain.csv"
    plain.write_text("x")
    new = atomic_write(tmp_path / "new.csv", lambda p: p.write_text("y"))
    assert new.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    os.chmod(new, 0o640)
    atomic_write(new, lambda p: p.write_text("z"))
    assert new.stat().st_mode & 0o777 == 0o640 and new.read_text() == "z"


def _tiny_folder(root: Path, per_class: int = 6) -> Path:
    """A small real (non-synthetic) ImageFolder: distinct random images, two classes."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for cls in ("daisy", "rose"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(48, 48, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def test_a_run_directory_keeps_its_split_and_manifest_none_false_and_a_path_mean_what_they_say(tmp_path, monkeypatch):
    from bagnet_lib.course import pipeline

    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    data = _tiny_folder(tmp_path / "flowers")
    rows = [f"{c}/{i}.png,{'train' if i < 4 else ('val' if i == 4 else 'test')}" for c in ("daisy", "rose") for i in range(6)]
    manifest = tmp_path / "split.csv"
    manifest.write_text("path,split\n" + "\n".join(rows) + "\n")
    monkeypatch.setenv("BAGNET_MANIFEST", str(manifest))  # what `make lab` exports
    by_env = pipeline.prepare_run(tmp_path / "env", "smoke", data, None, 0, progress=False)
    assert json.loads((tmp_path / "env" / "run.json").read_text())["manifest"] == str(manifest)
    assert sorted(by_env.split[by_env.split["split"] == "test"]["path"]) == ["daisy/5.png", "rose/5.png"]
    own = pipeline.prepare_run(tmp_path / "own", "smoke", data, False, 0, progress=False)  # False: the project's split
    assert json.loads((tmp_path / "own" / "run.json").read_text())["manifest"] is None
    # None keeps what a run directory has; an explicit other split, or another seed, is refused in one paragraph
    assert pipeline.prepare_run(tmp_path / "own", "smoke", data, None, 0, progress=False).split.equals(own.split)
    with pytest.raises(UserError, match=r"made with this project's own split; this one asks for the split of .*split.csv"):
        pipeline.prepare_run(tmp_path / "own", "smoke", data, manifest, 0, progress=False)
    with pytest.raises(UserError, match="made with the split of .*; this one asks for this project's own split"):
        pipeline.prepare_run(tmp_path / "env", "smoke", data, False, 0, progress=False)
    with pytest.raises(UserError, match="seed 0; this one asks for 'smoke' and seed 1.*use another run directory"):
        pipeline.prepare_run(tmp_path / "own", "smoke", data, None, 1, progress=False)
