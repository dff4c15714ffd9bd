"""The ImageNet study on a fake validation folder (3 synsets, 4 JPEGs each, one damaged file) with a seeded,
randomly initialised BagNet-33 whose head fits: the streaming pass gives the cached sweep's numbers, 2 ranks
give 1 rank's, a killed run resumes to the same sums, and every bad input gets its error before any work."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bagnet_lib import cli
from bagnet_lib.blackout.channels import channel_sweep
from bagnet_lib.blackout.imagenet import StreamSettings, stream_blackout
from bagnet_lib.blackout.sweep import cache_logits, sweep
from bagnet_lib.course.imagenet import imagenet_study
from bagnet_lib.data.fake_imagenet import write_fake_val
from bagnet_lib.data.imagenet import ValFolder, check_layout
from bagnet_lib.errors import UserError
from bagnet_lib.nets import models as models_mod
from bagnet_lib.nets import precision as precision_mod
from bagnet_lib.nets.models import bagnet33, imagenet_model
from tests.conftest import ROOT
from tests.multiproc import two_ranks_and_one

CLASSES, PER_CLASS = 3, 4
SETTINGS = StreamSettings(kinds=("random", "checkerboard", "topk"), drop_fracs=(0.25, 0.5, 0.75), seeds=3,
                          aggregations=("mean", "zero", "median"), channel_kinds=("random", "alternating"),
                          pixel_fracs=(0.5,))
COUNTS = ["kind", "drop_frac", "seed", "aggregation", "n_images", "acc", "top5"]


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> Path:
    return write_fake_val(tmp_path_factory.mktemp("imagenet") / "val", CLASSES, PER_CLASS, damaged=1)


@pytest.fixture(scope="module")
def weights(val) -> Path:
    torch.manual_seed(0)
    path = val.parent / "random_bagnet33.pt"
    torch.save(bagnet33(num_classes=CLASSES, width=0.125).state_dict(), path)
    return path


def _stream(val: Path, weights: Path, partial: Path, batch_size: int, workers: int = 0):
    model, _ = imagenet_model("bagnet33", weights)
    return stream_blackout(model, ValFolder(val), SETTINGS, partial, {"test": 1}, batch_size=batch_size,
                           workers=workers, progress=False)


def test_the_stream_equals_the_cached_sweep_on_the_same_images_and_masks(val, weights, tmp_path):
    result = _stream(val, weights, tmp_path / "partial", batch_size=1, workers=2)
    assert result.n_images == CLASSES * PER_CLASS and len(result.unreadable) == 1
    folder = ValFolder(val)
    items = [folder[i] for i in range(len(folder))]
    images = torch.stack([x for x, *_ in items if x is not None])
    labels = torch.tensor([y for x, y, *_ in items if x is not None])
    model, _ = imagenet_model("bagnet33", weights)
    cache = cache_logits(model, images, labels, batch_size=1, progress=False)  # one image a forward, as the stream
    cached = pd.concat([sweep(cache, SETTINGS.kinds, SETTINGS.drop_fracs, range(SETTINGS.seeds), SETTINGS.aggregations),
                        channel_sweep(cache, SETTINGS.channel_settings(), range(SETTINGS.seeds))], ignore_index=True)
    streamed = result.frame[result.frame["kind"].isin(set(cached["kind"]))].reset_index(drop=True)
    assert len(streamed) == len(cached) == 3 * (3 * 3 + 1 + 3) + (3 * 3 + 1)
    assert streamed[["kind", "drop_frac", "seed", "aggregation", "n_images", "acc"]].equals(
        cached[["kind", "drop_frac", "seed", "aggregation", "n_images", "acc"]])
    assert streamed["loss"].tolist() == pytest.approx(cached["loss"].tolist(), rel=1e-12)
    assert streamed["kept_frac"].tolist() == pytest.approx(cached["kept_frac"].tolist(), rel=1e-12)
    full = result.frame[result.frame["kind"] == "full"].iloc[0]  # the model's own prediction, fc(pooled features)
    with torch.no_grad():
        assert full["acc"] == (model.fc(cache.features).argmax(1) == labels).double().mean().item()
    pixel = result.frame[result.frame["kind"] == "pixel_random"]
    assert len(pixel) == 1 and pixel["kept_frac"].iloc[0] == pytest.approx(0.5, abs=1 / 784)


def _ranked_stream(val: Path, weights: Path, tmp: Path, rank: int, world_size: int) -> dict:
    result = _stream(val, weights, tmp / f"partial-{world_size}", batch_size=2)
    return {"frame": result.frame[COUNTS + ["loss"]].to_dict("list"), "n": result.n_images,
            "unreadable": [Path(p).name for p in result.unreadable], "world": result.world_size}


@pytest.mark.timeout(300)
def test_two_ranks_with_gloo_equal_one_rank_each_image_counted_once(val, weights, tmp_path):
    ranks, one = two_ranks_and_one(tmp_path, functools.partial(_ranked_stream, val, weights, tmp_path))
    for r in ranks:
        assert r["world"] == 2 and r["n"] == one["n"] == CLASSES * PER_CLASS
        assert r["unreadable"] == one["unreadable"] and len(one["unreadable"]) == 1
        assert all(r["frame"][c] == one["frame"][c] for c in COUNTS)
        assert r["frame"]["loss"] == pytest.approx(one["frame"]["loss"], rel=1e-12)
    assert sorted(p.name for p in (tmp_path / "partial-2").iterdir()) == ["rank0-of-2.pt", "rank1-of-2.pt"]
    with pytest.raises(UserError, match="another number of processes"):  # 1 process on 2 ranks' partial sums
        _stream(val, weights, tmp_path / "partial-2", batch_size=2)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bagnet_lib", "imagenet", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.mark.timeout(600)
def test_a_killed_run_resumes_to_the_sums_of_an_uninterrupted_one(val, weights, tmp_path):
    common = ["--val-dir", str(val), "--weights", str(weights), "--seeds", "2", "--batch-size", "2", "--workers", "0",
              "--checkpoint-every", "2", "--no-progress", "--pixel", "0.25"]
    whole = _cli(*common, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed = _cli(*common, "--out", str(tmp_path / "resumed"), env={"BAGNET_FAULT": "stream_batch#3"})
    assert killed.returncode == -9  # SIGKILL after batch 3; the partial sums on disk end after batch 2
    partial = tmp_path / "resumed" / "bagnet33" / "partial" / "rank0-of-1.pt"
    assert torch.load(partial, weights_only=True)["batches"] == 2
    assert not (tmp_path / "resumed" / "bagnet33" / "blackout.csv").exists()
    resumed = _cli(*common, "--out", str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = (pd.read_csv(tmp_path / d / "bagnet33" / "blackout.csv") for d in ("whole", "resumed"))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert "top-1" in resumed.stdout and "1 unreadable" in resumed.stdout
    more_seeds = list(common)
    more_seeds[more_seeds.index("--seeds") + 1] = "3"
    other = _cli(*more_seeds, "--out", str(tmp_path / "resumed"))
    assert other.returncode == 2 and "partial sums of another evaluation" in other.stderr


@pytest.mark.timeout(600)
def test_the_command_under_torchrun_gives_the_one_process_numbers(val, weights, tmp_path):
    common = ["--val-dir", str(val), "--weights", str(weights), "--seeds", "2", "--batch-size", "2", "--workers", "1",
              "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "BAGNET_FAULT"}
    env.update({"OMP_NUM_THREADS": "1", "BAGNET_DIST_TIMEOUT": "60"})  # one thread, as torchrun gives each rank
    one = subprocess.run([sys.executable, "-m", "bagnet_lib", "imagenet", *common, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "bagnet_lib", "imagenet", *common, "--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    assert "2 processes" in two.stdout and two.stdout.count("written to") == 1  # rank 0 alone speaks and writes
    a, b = (pd.read_csv(tmp_path / d / "bagnet33" / "blackout.csv") for d in ("one", "two"))
    pd.testing.assert_frame_equal(a[COUNTS], b[COUNTS], check_exact=True)
    assert b["loss"].tolist() == pytest.approx(a["loss"].tolist(), rel=1e-12)
    assert sorted(p.name for p in (tmp_path / "two" / "bagnet33" / "partial").iterdir()) == ["rank0-of-2.pt",
                                                                                            "rank1-of-2.pt"]


def test_outputs_summary_and_the_damaged_jpeg_counted_and_named(val, weights, tmp_path):
    s = imagenet_study(val, "bagnet33", weights, tmp_path / "out", StreamSettings(seeds=2), batch_size=4, workers=0,
                       progress=False)
    out = tmp_path / "out" / "bagnet33"
    assert sorted(p.name for p in out.iterdir()) == ["blackout.csv", "drop_curve.png", "partial", "summary.json"]
    assert s["n_images"] == CLASSES * PER_CLASS and s["n_unreadable"] == 1 and s["files"] == CLASSES * PER_CLASS + 1
    assert s["unreadable"] == [f"n00000000/ILSVRC2012_val_{CLASSES * PER_CLASS + 1:08d}.JPEG"]
    assert not s["weights"]["published"] and not s["anchors_apply"] and s["grid"] == [24, 24]
    assert {a["value"] for a in s["anchors"]} >= {87.6, 66.70, 87.00, 64.23, 57.96}
    assert all(a["this_run"] is None for a in s["anchors"])  # random weights: nothing to compare
    frame = pd.read_csv(out / "blackout.csv")
    assert {"full", "random", "checkerboard", "channel_random", "channel_alternating"} == set(frame["kind"])
    assert (frame["acc_ci_low"] <= frame["acc"]).all() and (frame["top5"] >= frame["acc"]).all()
    assert {r["setting"] for r in s["paper_settings"]} == {"alternating 50%", "random 25%", "random 50%", "random 75%"}
    assert (out / "drop_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_published_checkpoint_in_the_right_precision_is_compared_with_its_anchors(val, tmp_path, monkeypatch):
    from bagnet_lib.course.imagenet import anchor_table
    from bagnet_lib.nets.models import WeightsInfo

    full = pd.Series({"acc": 0.6650, "top5": 0.8710})
    info = WeightsInfo("x", "2ddd53ed" + "0" * 56, True, 1000, 1.0)
    rows = {(a["source"][:9], a["metric"], a["precision"]): a for a in anchor_table("bagnet33", full, info, "fp32")}
    assert rows[("bagnetsv2", "top1", "fp32")]["difference"] == pytest.approx(66.50 - 66.70)
    assert rows[("bagnetsv2", "top1", "tf32")]["this_run"] is None  # another precision: not comparable
    assert all(a["this_run"] is None for a in anchor_table("bagnet33", full, info, "bf16"))


# --------------------------------------------------------------------------- bad input
def test_folders_not_in_imagenet_layout_are_refused_by_name_before_any_work(tmp_path, val, weights, monkeypatch):
    monkeypatch.setattr(models_mod, "load_state_dict_file", lambda *a: pytest.fail("weights read before the check"))
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list((val / "n00000001").iterdir())[:2]:
        (flat / f.name).write_bytes(f.read_bytes())
    with pytest.raises(UserError, match=r"flat.*2 images directly inside it.*valprep"):
        imagenet_study(flat, weights=weights, out=tmp_path / "o")
    (tmp_path / "up" / "val").mkdir(parents=True)
    with pytest.raises(UserError, match=r"not named by a WordNet id.*e\.g\. val"):
        imagenet_study(tmp_path / "up", weights=weights, out=tmp_path / "o")
    with pytest.raises(UserError, match="does not exist"):
        imagenet_study(tmp_path / "missing", weights=weights, out=tmp_path / "o")
    (tmp_path / "holes" / "n00000000").mkdir(parents=True)
    with pytest.raises(UserError, match="hold no image"):
        check_layout(tmp_path / "holes")
    assert not (tmp_path / "o").exists()


def test_a_class_count_that_does_not_fit_the_head_names_both_numbers(val, tmp_path):
    path = tmp_path / "five.pt"
    torch.save(bagnet33(num_classes=5, width=0.125).state_dict(), path)
    with pytest.raises(UserError, match=r"has 3 class folders, but the weights' head .* has 5 outputs"):
        imagenet_study(val, weights=path, out=tmp_path / "o")


def test_a_checkpoint_whose_sha256_misses_the_published_prefix_is_refused_and_nothing_is_loaded(val, weights, tmp_path,
                                                                                                monkeypatch):
    fake = tmp_path / "bagnet32-2ddd53ed.pth.tar"  # the published file name, other bytes
    fake.write_bytes(weights.read_bytes())
    loaded = []
    monkeypatch.setattr(models_mod, "load_state_dict_file", lambda p: loaded.append(p))
    with pytest.raises(UserError, match=r"must start with 2ddd53ed \(the published bagnet32-2ddd53ed.pth.tar\).*nothing "
                                        "was loaded"):
        imagenet_model("bagnet33", fake)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # --weights imagenet: the torch.hub cache's copy
    cached = tmp_path / "hub" / "hub" / "checkpoints" / fake.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(fake.read_bytes())
    with pytest.raises(UserError, match="must start with 2ddd53ed"):
        imagenet_model("bagnet33", "imagenet")
    assert loaded == []
    assert cached.read_bytes() == fake.read_bytes()  # refused, not deleted: the user's file is theirs


def test_the_command_line_says_each_error_in_one_paragraph(val, weights, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IMAGENET_VAL", raising=False)
    assert cli.main(["imagenet", "--weights", str(weights)]) == 2
    assert "No ImageNet validation folder" in capsys.readouterr().err
    assert cli.main(["imagenet", "--val-dir", str(val), "--weights", str(weights), "--drop-fracs", "1.0"]) == 2
    assert "Drop fractions must lie in [0, 1)" in capsys.readouterr().err
    assert cli.main(["imagenet", "--val-dir", str(val), "--weights", str(weights), "--batch-size", "0"]) == 2
    assert "The batch size must be at least 1 (got 0)" in capsys.readouterr().err
    assert cli.main(["imagenet", "--val-dir", str(val.parent), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "WordNet id" in err


# --------------------------------------------------------------------------- precision
@pytest.fixture
def tf32_on():
    """Both TF32 switches on (cuDNN's default, not matmul's), the session's own settings back afterwards."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_fp32_evaluation_turns_tf32_off_and_restores_the_flags_after(val, weights, tmp_path, tf32_on):
    model, _ = imagenet_model("bagnet33", weights)
    seen = []
    model.layer4.register_forward_hook(lambda *a: seen.append(precision_mod.tf32_flags()))
    stream_blackout(model, ValFolder(val), StreamSettings(seeds=1), tmp_path / "p", {}, batch_size=8, workers=0,
                    progress=False)
    assert seen and all(f == {"cudnn.allow_tf32": False, "cuda.matmul.allow_tf32": False} for f in seen)
    assert precision_mod.tf32_flags() == {"cudnn.allow_tf32": True, "cuda.matmul.allow_tf32": True}

    def boom(*a):
        raise RuntimeError("in the middle of a forward pass")

    model.layer4.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="middle"):
        stream_blackout(model, ValFolder(val), StreamSettings(seeds=1), tmp_path / "q", {}, batch_size=8, workers=0,
                        progress=False)
    assert precision_mod.tf32_flags() == {"cudnn.allow_tf32": True, "cuda.matmul.allow_tf32": True}


def test_bf16_stays_available_with_a_warning_that_names_the_published_figures(val, weights, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_has_fast_bf16", lambda: True)
    with pytest.warns(UserWarning, match=r"66\.70 % top-1 in fp32, 64\.23 % with TF32 convolutions and 57\.96 %"):
        s = imagenet_study(val, weights=weights, out=tmp_path / "o", settings=StreamSettings(seeds=1), workers=0,
                           precision="bf16", progress=False)
    assert s["precision"] == "bf16" and s["tf32"] == "autocast"


# --------------------------------------------------------------------------- notebook 06
@pytest.mark.timeout(900)
def test_notebook_06_runs_on_a_fake_folder_and_says_what_to_do_without_one(val, weights, tmp_path, monkeypatch):
    from bagnet_lib.course.record import read_records
    from bagnet_lib.course.runner import OPTIONAL_NOTEBOOKS, run_notebook

    name = OPTIONAL_NOTEBOOKS[0]
    monkeypatch.delenv("IMAGENET_VAL", raising=False)
    run_notebook(name, tmp_path / "none", {"RUN_DIR": str(tmp_path / "none")})
    assert read_records(tmp_path / "none" / "notebooks" / name) == {"ready": False}
    text = (tmp_path / "none" / "notebooks" / name).read_text()
    assert "No ImageNet validation folder" in text and "valprep.sh" in text and "Traceback" not in text
    assert not (tmp_path / "none" / "bagnet33").exists()

    monkeypatch.setenv("IMAGENET_VAL", str(val))  # the notebook reads the variable when DATA_DIR is not given
    run_notebook(name, tmp_path / "fake", {"RUN_DIR": str(tmp_path / "fake"), "WEIGHTS": str(weights), "SEEDS": 2,
                                           "WORKERS": 0, "PIXEL": [0.5], "BATCH_SIZE": 4})
    rec = read_records(tmp_path / "fake" / "notebooks" / name)
    assert rec["ready"] and rec["n_images"] == CLASSES * PER_CLASS and rec["n_unreadable"] == 1
    assert not rec["anchors_apply"]
    summary = pd.read_json(tmp_path / "fake" / "bagnet33" / "summary.json", typ="series")
    assert summary["full"]["top1"]["value"] == pytest.approx(rec["top1"])
    assert (tmp_path / "fake" / "bagnet33" / "drop_curve.png").is_file()


# --------------------------------------------------------------------------- bench imagenet
@pytest.mark.timeout(600)
def test_bench_imagenet_quick_measures_each_pass_in_its_own_process(tmp_path):
    from bagnet_lib.bench import imagenet as bench

    out = tmp_path / "imagenet.json"
    proc = subprocess.run([sys.executable, "-m", "bagnet_lib", "bench", "imagenet", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = pd.read_json(out, typ="series")
    assert r["benchmark"] == "imagenet" and r["quick"] and list(r["passes"]) == ["64", "128"]
    for n, p in r["passes"].items():
        assert p["images"] == int(n) and p["batches"] == -(-int(n) // 32) and p["precision"] == "fp32"
        assert 0 < p["sweep_s"] and 0 < p["forward_s"] and p["peak_rss_mb"] > 100 and p["width"] == 0.125
    assert r["configurations"] == {"patch": 52, "channel": 26, "pixel": 0}  # StreamSettings()'s default set
    table = bench.format_table(r.to_dict())
    assert "| 64 |" in table and "| 128 |" in table and "the peak RSS (median) changes by" in table
    assert cli.main(["bench", "sweep", "--device", "cuda"]) == 2
