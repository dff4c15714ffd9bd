"""`bench sweep` and `bench train`: the quick versions run, agree where they must, and report sane numbers.

Timings are not asserted (the machine is shared); equality checks, structure and real properties are.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bagnet_lib.bench import sweep as bench_sweep
from bagnet_lib.bench import train as bench_train

ROOT = Path(__file__).resolve().parents[1]


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: timings are not asserted, and on a 2-core machine shared with other jobs two
    OpenMP threads can make each step many times slower (a thread waits at every barrier for the other,
    descheduled one), which would make this file slow exactly when the machine is busy."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def sweep_result(one_thread) -> dict:
    return bench_sweep.run(quick=True)


@pytest.fixture(scope="module")
def train_result(one_thread) -> dict:
    return bench_train.run(quick=True)


# --------------------------------------------------------------------------- sweep
@pytest.mark.slow
def test_sweep_quick_agrees_with_recompute(sweep_result):
    r = sweep_result
    assert r["max_abs_diff"] < 1e-5
    assert len(r["checked"]) == r["recompute_configs_timed"] + 1  # the warm-up configuration is checked too
    for c in r["checked"]:
        assert c["acc_recompute"] == pytest.approx(c["acc_sweep"], abs=1e-5)
        assert c["loss_recompute"] == pytest.approx(c["loss_sweep"], abs=1e-5)
        assert 0.5 < c["loss_sweep"] < 5  # BatchNorm calibrated: logits at a trained model's scale


@pytest.mark.slow
def test_sweep_quick_structure(sweep_result):
    r = sweep_result
    for key in ("recompute_s_per_config", "sweep_s_per_config", "speedup", "configs", "max_abs_diff", "images",
                "image_size", "width", "cache_s", "recompute_configs_timed", "torch_threads"):
        assert key in r, key
    s = bench_sweep._settings(True)
    assert r["configs"] == s["n_fracs"] * s["n_seeds"] * len(bench_sweep.AGGREGATIONS) == 100
    assert r["recompute_configs_timed"] >= 3
    assert (r["images"], r["image_size"], r["width"]) == (32, 112, 0.25)
    for key in ("recompute_s_per_config", "sweep_s_per_config", "speedup", "cache_s", "sweep_s"):
        assert _positive_finite(r[key]), key
    assert all(_positive_finite(t) for t in r["recompute_s"] + r["sweep_runs_s"])
    assert r["speedup"] == pytest.approx(r["recompute_s_per_config"] / r["sweep_s_per_config"])
    json.dumps(r)  # JSON-ready
    assert "speedup" in bench_sweep.format_table(r)


def test_sweep_full_settings_sweep_at_least_1000_configs():
    s = bench_sweep._settings(False)
    assert s["n_fracs"] * s["n_seeds"] * len(bench_sweep.AGGREGATIONS) >= 1000
    assert s["recompute_configs"] >= 3
    fracs = bench_sweep._drop_fracs(s["n_fracs"])
    assert len(set(fracs)) == s["n_fracs"] and 0 <= min(fracs) and max(fracs) < 1


@pytest.mark.slow
def test_cli_bench_sweep_quick_writes_json(tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, "-m", "bagnet_lib", "bench", "sweep", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # see `one_thread`
    assert proc.returncode == 0, proc.stderr
    assert "speedup" in proc.stdout and f"written to {out}" in proc.stdout
    r = json.loads(out.read_text())
    assert r["benchmark"] == "sweep" and r["quick"] is True
    assert r["max_abs_diff"] < 1e-5 and r["configs"] == 100 and r["torch_threads"] == 1


# --------------------------------------------------------------------------- train
MODEL_KEYS = ("images_per_s", "gflops", "peak_gflops", "fraction_of_peak", "data_wait_fraction",
              "baseline_images_per_s", "baseline_data_wait_fraction", "flops_per_image")


@pytest.mark.slow
def test_train_quick_structure(train_result):
    r = train_result
    assert r["data"] == "synthetic"  # the quick run never reads the real photos
    assert set(r["models"]) == {"resnet50", "bagnet33"}
    assert _positive_finite(r["peak_gflops"])
    for name, m in r["models"].items():
        for key in MODEL_KEYS:
            assert key in m, (name, key)
        for key in ("images_per_s", "gflops", "peak_gflops", "fraction_of_peak", "baseline_images_per_s",
                    "flops_per_image"):
            assert _positive_finite(m[key]), (name, key)
        assert 0 <= m["data_wait_fraction"] <= 1
        assert 0 <= m["baseline_data_wait_fraction"] <= 1
        assert m["fraction_of_peak"] == pytest.approx(m["gflops"] / m["peak_gflops"])
        assert m["gflops"] == pytest.approx(m["flops_per_image"] * m["images_per_s"] / 1e9)
        assert m["settings"] == {"threads": r["torch_threads"], "channels_last": False, "compiled": False,
                                 "batch_size": 32}
        assert m["tried"] == []  # the quick run tries no options
    json.dumps(r)
    text = bench_train.format_table(r)
    assert "resnet50" in text and "bagnet33" in text


@pytest.mark.slow
def test_train_flops_bagnet_costs_more_per_image(train_result):
    """A BagNet has no stem downsampling (stride-1 stem, no max-pool), so it costs more per image."""
    m = train_result["models"]
    ratio = m["bagnet33"]["flops_per_image"] / m["resnet50"]["flops_per_image"]
    assert ratio > 1
    assert train_result["bagnet33_over_resnet50_flops"] == pytest.approx(ratio)
    # forward + backward ≈ 3 forward passes; ResNet-50 at width 0.25, 112 px: ≈ 4.1 GFLOP·(1/16)·(1/4)·2·3
    assert 0.2e9 < m["resnet50"]["flops_per_image"] < 0.7e9


def test_ab_and_peak_helpers_run_on_a_tiny_profile(synthetic_root, one_thread):
    """The A/B machinery of the full run (not exercised by the quick run), on a tiny network."""
    from bagnet_lib.data.tensors import base_size_for, decode_images
    from bagnet_lib.data.folder import list_images
    from bagnet_lib.data.tensors import ImageTensors
    from bagnet_lib.profiles import get_profile

    profile = get_profile("cpu", image_size=48, width=0.125, batch_size=8)
    samples = list_images(synthetic_root)[:40]
    imgs = decode_images(synthetic_root, [s.path for s in samples], base_size_for(48), progress=False)
    classes = sorted({s.label for s in samples})
    data = ImageTensors(imgs, torch.tensor([classes.index(s.label) for s in samples]), [s.path for s in samples],
                        classes)
    settings = {"ab_rounds": 1, "ab_steps": 1, "ab_warmup": 1}
    threads = torch.get_num_threads()
    for option in ("channels_last", "threads_1", "batch_64"):
        t = bench_train._ab("resnet50", option, profile, data, settings, threads)
        assert t["option"] == option and _positive_finite(t["speedup"])
        assert t["kept"] == (option != "batch_64" and t["speedup"] >= bench_train.KEEP_THRESHOLD)
    assert torch.get_num_threads() == threads  # restored after the 1-thread arm
    p = bench_train._mm_peak(1, n=256)
    assert _positive_finite(p["median"]) and p["best"] >= p["median"]
