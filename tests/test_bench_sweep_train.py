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
from bagnet_lib.nets.profiles import get_profile

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
    cpu = get_profile("cpu")  # the quick run keeps the cpu profile's resolution and width
    assert (r["images"], r["image_size"], r["width"]) == (32, cpu.image_size, cpu.width)
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
@pytest.mark.slow
def test_train_quick_structure(train_result):
    r = train_result
    assert r["data"] == "synthetic"  # the quick run never reads the real photos
    assert set(r["models"]) == {"resnet50", "bagnet33"}
    assert all(_positive_finite(r["peak_gflops"][p]) for p in ("fp32", "bf16"))
    expected_precision = bench_train.resolve_precision("bf16", torch.device("cpu"))
    for name, m in r["models"].items():
        bagnet = name == "bagnet33"
        assert {k: m["settings"][k] for k in ("precision", "channels_last", "compile")} == {
            "precision": expected_precision, "channels_last": True, "compile": bagnet}
        assert m["fp32_nchw"]["precision"] == "fp32" and not m["fp32_nchw"]["channels_last"]
        assert m["today"]["precision"] == expected_precision and m["today"]["channels_last"] == (not bagnet)
        assert not m["today"]["compile"] and m["profile"]["compile"] == bagnet
        if bagnet:  # compiled for real (a toolchain is here), once, outside the timed steps
            assert m["settings"]["compile_fallback"] is None and _positive_finite(m["compile_s"])
        else:
            assert m["compile_s"] is None
        assert m["speedup_vs_today"] == pytest.approx(m["profile"]["images_per_s"] / m["today"]["images_per_s"])
        for key in ("fp32_nchw", "today", "profile"):
            a = m[key]
            for k in ("images_per_s", "gflops", "peak_gflops", "fraction_of_peak", "seconds"):
                assert _positive_finite(a[k]), (name, key, k)
            assert 0 <= a["data_wait_fraction"] <= 1
            assert a["peak_gflops"] == r["peak_gflops"][a["precision"]]  # the peak of the precision it uses
            assert a["fraction_of_peak"] == pytest.approx(a["gflops"] / a["peak_gflops"])
            assert a["gflops"] == pytest.approx(m["flops_per_image"] * a["images_per_s"] / 1e9)
        assert m["speedup"] == pytest.approx(m["profile"]["images_per_s"] / m["fp32_nchw"]["images_per_s"])
    json.dumps(r)
    table = bench_train.format_table(r)
    assert "| resnet50 | fp32, NCHW, eager | " in table and "(today)" in table and "GFLOP/s bf16" in table
    assert "| bagnet33 | bf16, channels-last, torch.compile (the profile); compiled in " in table


@pytest.mark.slow
def test_train_flops_bagnet_costs_more_per_image(train_result):
    """A BagNet has no stem downsampling (stride-1 stem, no max-pool), so it costs more per image."""
    m = train_result["models"]
    assert m["bagnet33"]["flops_per_image"] > m["resnet50"]["flops_per_image"]
    # forward + backward ≈ 3 forward passes; ResNet-50 at width 0.25, 112 px: ≈ 4.1 GFLOP·(1/16)·(1/4)·2·3
    assert 0.2e9 < m["resnet50"]["flops_per_image"] < 0.7e9


def test_matmul_peak_helper_measures_each_precision(one_thread):
    for dtype in (torch.float32, torch.bfloat16):
        p = bench_train.mm_peak(1, n=256, dtype=dtype)
        assert _positive_finite(p["median"]) and p["best"] >= p["median"] and p["dtype"] in str(dtype)


def test_readme_block_is_rewritten_from_the_json(tmp_path):
    from bagnet_lib.cli import main

    arm = lambda prec, cl, ips, comp=False: {"precision": prec, "channels_last": cl, "compile": comp,  # noqa: E731
                                             "images_per_s": ips, "data_wait_fraction": 0.02, "gflops": 50.0,
                                             "fraction_of_peak": 0.25}
    result = {"benchmark": "train", "quick": False, "data": "real", "image_size": 112, "width": 0.25,
              "batch_size": 32, "torch_threads": 2, "peak_gflops": {"fp32": 150.0, "bf16": 400.0},
              "models": {"resnet50": {"fp32_nchw": arm("fp32", False, 140.0), "today": arm("bf16", True, 280.0),
                                      "profile": arm("bf16", True, 350.0, True), "compile_s": 61.4}}}
    js = tmp_path / "train.json"
    js.write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench-train:start -->\nold\n<!-- bench-train:end -->\nrest\n")
    assert main(["bench", "train", "--from-json", str(js), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("rest\n")
    assert ("| resnet50 | bf16, channels-last, torch.compile (the profile); compiled in 61 s | 350 | 2.50× | **1.25×** "
            "| 50 | 25 % | 2.0 % |") in text
    assert "| resnet50 | bf16, channels-last, eager (today) | 280 | 2.00× | 1.00× |" in text


# --------------------------------------------------------------------------- precision
@pytest.mark.slow
def test_precision_quick_trains_both_arms_from_the_same_start(one_thread, monkeypatch):
    from bagnet_lib.bench import precision as bench_precision

    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    r = bench_precision.run(quick=True)
    assert r["data"] == "synthetic" and r["split"] == "fresh" and r["epochs"] == 1
    for name in ("resnet50", "bagnet33"):
        f, b = r["models"][name]["fp32_nchw"], r["models"][name]["profile"]
        assert f["precision"] == "fp32" and not f["channels_last"] and b["precision"] == "bf16" and b["channels_last"]
        assert len(f["val_acc"]) == len(b["val_acc"]) == 1 and all(0 <= a <= 1 for a in f["val_acc"] + b["val_acc"])
        assert r["models"][name]["final_val_acc_difference"] == pytest.approx(b["val_acc"][-1] - f["val_acc"][-1])
    json.dumps(r)
    assert "| resnet50 |" in bench_precision.format_table(r)
