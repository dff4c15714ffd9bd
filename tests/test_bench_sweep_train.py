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
    assert _positive_finite(r["peak_gflops"]["bf16"])
    expected_precision = bench_train.resolve_precision("bf16", torch.device("cpu"))
    cpu = get_profile("cpu")
    for name, m in r["models"].items():
        bagnet = name == "bagnet33"
        p = cpu.for_model(name)
        assert (m["profile"]["train_crop"], m["profile"]["batch_size"]) == (p.train_crop, p.batch_size)
        assert (m["previous"]["train_crop"], m["previous"]["batch_size"]) == (
            bench_train.PREVIOUS[name]["train_size"], bench_train.PREVIOUS[name]["batch_size"])
        assert m["prebuilt"]["prebuilt"] and not m["profile"]["prebuilt"] and not m["previous"]["prebuilt"]
        for key in ("previous", "profile", "prebuilt"):
            a = m[key]
            assert a["precision"] == expected_precision and a["channels_last"] and a["compile"] == bagnet
            for k in ("images_per_s", "gflops", "peak_gflops", "fraction_of_peak", "seconds", "flops_per_image"):
                assert _positive_finite(a[k]), (name, key, k)
            assert 0 <= a["data_wait_fraction"] <= 1
            assert a["peak_gflops"] == r["peak_gflops"]["bf16"]
            assert a["fraction_of_peak"] == pytest.approx(a["gflops"] / a["peak_gflops"])
            assert a["gflops"] == pytest.approx(a["flops_per_image"] * a["images_per_s"] / 1e9)
        if bagnet:  # compiled for real (a toolchain is here), once per arm, outside the timed steps
            assert m["compile_fallback"] is None and set(m["compile_s"]) == {"previous", "profile"}
        else:
            assert m["compile_s"] is None
        assert m["speedup_vs_previous"] == pytest.approx(m["profile"]["images_per_s"] / m["previous"]["images_per_s"])
        assert m["augmentation_cost"] == pytest.approx(1 - m["profile"]["images_per_s"] / m["prebuilt"]["images_per_s"])
        ops = m["top_ops"]
        assert 0 < len(ops) <= bench_train.TOP_OPS and all(o["self_cpu_s"] > 0 and 0 < o["share"] <= 1 for o in ops)
        assert [o["self_cpu_s"] for o in ops] == sorted((o["self_cpu_s"] for o in ops), reverse=True)
    json.dumps(r)
    table = bench_train.format_table(r)
    assert "| resnet50 | previous profile (bf16, channels-last, eager) | 128 px | 32 |" in table
    assert "| bagnet33 | the profile, batches built beforehand (bf16, channels-last, torch.compile) |" in table
    assert "Top operators of bagnet33's step" in table and "bagnet33: compiled in " in table


@pytest.mark.slow
def test_train_flops_bagnet_costs_more_per_image(train_result):
    """A BagNet has no stem downsampling (stride-1 stem, no max-pool), so it costs more per image."""
    m = train_result["models"]
    for arm in ("previous", "profile"):
        assert m["bagnet33"][arm]["flops_per_image"] > m["resnet50"][arm]["flops_per_image"]
    # forward + backward ≈ 3 forward passes; ResNet-50 at width 0.25, 128 px: ≈ 4.1 GFLOP·(1/16)·(128/224)²·2·3
    assert 0.3e9 < m["resnet50"]["profile"]["flops_per_image"] < 0.8e9


def test_matmul_peak_helper_measures_each_precision(one_thread):
    for dtype in (torch.float32, torch.bfloat16):
        p = bench_train.mm_peak(1, n=256, dtype=dtype)
        assert _positive_finite(p["median"]) and p["best"] >= p["median"] and p["dtype"] in str(dtype)


def test_readme_block_is_rewritten_from_the_json(tmp_path):
    from bagnet_lib.cli import main

    arm = lambda crop, ips, prebuilt=False: {"train_crop": crop, "batch_size": 32, "precision": "bf16",  # noqa: E731
                                             "channels_last": True, "compile": False, "prebuilt": prebuilt,
                                             "images_per_s": ips, "data_wait_fraction": 0.02, "gflops": 50.0,
                                             "fraction_of_peak": 0.25}
    result = {"benchmark": "train", "quick": False, "data": "real", "image_size": 224, "width": 0.25,
              "torch_threads": 2, "peak_gflops": {"bf16": 400.0},
              "models": {"resnet50": {"previous": arm(128, 250.0), "profile": arm(112, 300.0),
                                      "prebuilt": arm(112, 330.0, True), "compile_s": None,
                                      "augmentation_cost": 1 - 300 / 330,
                                      "top_ops": [{"op": "aten::convolution", "calls_per_step": 53, "self_cpu_s": 0.05,
                                                   "share": 0.4}]}}}
    js = tmp_path / "train.json"
    js.write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench-train:start -->\nold\n<!-- bench-train:end -->\nrest\n")
    assert main(["bench", "train", "--from-json", str(js), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("rest\n")
    assert "| resnet50 | the profile (bf16, channels-last, eager) | 112 px | 32 | 300 | **1.20×** | 50 | 25 % | 2.0 % |" in text
    assert "| resnet50 | previous profile (bf16, channels-last, eager) | 128 px | 32 | 250 | 1.00× |" in text
    assert "costs the live step 9 % of the prebuilt one's images/s" in text
    assert "| `aten::convolution` | 53 | 50.0 | 40.0 % |" in text


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
