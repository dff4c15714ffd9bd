"""Beyond one process: torchrun + DistributedDataParallel for training, sharded evaluation, faults in one rank.

Two kinds of multi-process tests, both with gloo on the CPU and no fixed ports: `torch.multiprocessing` with a
`file://` rendezvous in tmp_path (library functions inside a process group), and the real `torchrun
--standalone` (it picks a free port) running the real command line. Every test that starts processes has a
hard timeout, so that a hang fails instead of blocking the suite.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch import nn

from bagnet_lib.blackout.pixels import pixel_blackout_eval
from bagnet_lib.blackout.sweep import cache_logits
from bagnet_lib.data.tensors import epoch_order, rank_share, train_batches
from bagnet_lib.errors import UserError
from bagnet_lib.faults import armed
from bagnet_lib.nets import distributed as D
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.train import check_world, distribute, predict, train_on_batch
from tests.conftest import ROOT
from tests.multiproc import two_ranks_and_one

TIMEOUT = 300  # seconds for one launch; pytest-timeout bounds each test as well


# ----------------------------------------------------------------------------- no process group needed
def test_a_global_batch_is_the_same_images_and_augmentations_whatever_the_world_size(synthetic_root):
    from bagnet_lib.data.split import make_split
    from bagnet_lib.data.tensors import load_split_tensors

    df = make_split(synthetic_root, seed=0)
    data = load_split_tensors(synthetic_root, df, "train", sorted(df["label"].unique()), 48, progress=False)
    one = list(train_batches(data, 48, 8, seed=3, epoch=2))
    for world_size in (2, 4):
        shares = [list(train_batches(data, 48, 8, seed=3, epoch=2, rank=r, world_size=world_size))
                  for r in range(world_size)]
        for step, (x, y) in enumerate(one):
            assert torch.equal(torch.cat([s[step][0] for s in shares]), x)
            assert torch.equal(torch.cat([s[step][1] for s in shares]), y)
    batches = epoch_order(len(data), 8, 3, 2)
    assert sorted(i for b in batches for i in b) == sorted(set(i for b in batches for i in b))  # no image twice
    assert rank_share(list(range(7)), 0, 2) == [0, 1, 2] and rank_share(list(range(7)), 1, 2) == [3, 4, 5, 6]


@pytest.mark.parametrize("n,batch,size", [(21, 4, 2), (21, 5, 2), (3, 4, 2), (100, 8, 3), (7, 1, 4)])
def test_eval_blocks_are_contiguous_whole_batches_covering_every_image_once(n, batch, size):
    blocks = [D.eval_block(n, batch, D.World(rank=r, size=size)) for r in range(size)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))  # in order, no gap, no overlap, no padding
    assert all(start % batch == 0 for start, _ in blocks)  # each rank's batches are the batches of one process


def test_a_fault_point_can_be_armed_in_one_rank_only(monkeypatch):
    monkeypatch.setenv("BAGNET_FAULT", "after_batch#2@1")
    monkeypatch.setenv("RANK", "0")
    assert not any(armed("after_batch") for _ in range(3))
    monkeypatch.setenv("RANK", "1")
    assert [armed("after_batch") for _ in range(3)] == [False, True, False]


def test_a_world_size_that_does_not_divide_the_batch_is_refused_before_training():
    smoke = get_profile("smoke")  # batch 16
    check_world(smoke, 42, D.World(rank=0, size=4))
    with pytest.raises(UserError, match="batch of 16 images cannot be split over 3 processes"):
        check_world(smoke, 42, D.World(rank=0, size=3))
    with pytest.raises(UserError, match="last batch of each epoch holds 1 image"):
        check_world(get_profile("smoke", drop_last=False), 33, D.World(rank=0, size=2))


def test_nccl_without_enough_gpus_is_a_clear_error_before_any_process_group(monkeypatch):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError, match="NCCL needs one GPU per process.*--device cpu"):
        D.init_distributed("cuda")
    assert not dist.is_initialized()


# ----------------------------------------------------------------------------- torch.multiprocessing, file://
class NoBatchNorm(nn.Module):
    """A small convolutional network without BatchNorm: DDP's averaged gradient is exactly the global batch's."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        return self.body(x)


GLOBAL_BATCHES = (8, 7, 8, 7)  # 7 images over 2 ranks: shares of 3 and 4, where the loss scaling matters


def _steps(rank: int, world_size: int) -> dict:
    torch.manual_seed(0)
    model = NoBatchNorm()
    net, model = distribute(model, torch.device("cpu"), D.World(rank, world_size, 0, "gloo" if world_size > 1 else "none"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    for n in GLOBAL_BATCHES:
        x = torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8, generator=gen)
        y = torch.randint(0, 5, (n,), generator=gen)
        share = rank_share(list(range(n)), rank, world_size)
        train_on_batch(net, optimizer, x[share], y[share], grad_scale=len(share) * world_size / n)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.timeout(240)
def test_ddp_gradient_averaging_matches_one_process_without_batchnorm(tmp_path):
    ranks, one = two_ranks_and_one(tmp_path, _steps)
    start = NoBatchNorm().state_dict()
    for k in one:
        assert torch.equal(ranks[0][k], ranks[1][k]), k  # the ranks stay in step
        assert torch.allclose(ranks[0][k], one[k], rtol=1e-5, atol=1e-6), (k, (ranks[0][k] - one[k]).abs().max())
        assert not torch.allclose(one[k], start[k]), k  # the steps moved the weights


def _eval_inputs():
    torch.manual_seed(0)
    model = build_model("bagnet33", 5, width=0.125).eval()
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (21, 3, 48, 48), dtype=torch.uint8, generator=gen)  # odd: uneven blocks
    labels = torch.randint(0, 5, (21,), generator=gen)
    return model, images, labels


def _evaluate(rank: int, world_size: int) -> dict:
    model, images, labels = _eval_inputs()
    cache = cache_logits(model, images, labels, batch_size=4, paths=[f"{i}.jpg" for i in range(21)],
                         progress=False, precision="fp32")
    pixels = pixel_blackout_eval(model, images, labels, (6, 6), [0.5], [0, 1], batch_size=5, progress=False)
    return {"patch_logits": cache.patch_logits, "features": cache.features, "labels": cache.labels,
            "logits": predict(model, images, 5, precision="fp32"),  # 5 batches: blocks of 2 and 3
            "few": predict(model, images[:3], 4, precision="fp32"),  # one batch: rank 1 has none
            "bf16": predict(model, images, 4, precision="bf16"), "pixel_acc": torch.tensor(pixels["acc"].to_numpy()),
            "pixel_loss": torch.tensor(pixels["loss"].to_numpy())}


@pytest.mark.timeout(240)
def test_the_sharded_cache_predictions_and_pixel_blackout_equal_one_process_exactly(tmp_path):
    # one intra-op thread in each rank and in the one process: then fp32 is bit-identical too (docs/distributed.md)
    ranks, one = two_ranks_and_one(tmp_path, _evaluate)
    for rank, got in enumerate(ranks):  # every rank holds the whole result, in order
        assert got.keys() == one.keys()
        for k in one:
            assert got[k].shape == one[k].shape and torch.equal(got[k], one[k]), (rank, k)
    assert one["patch_logits"].shape[0] == one["logits"].shape[0] == 21 and one["few"].shape[0] == 3


# ----------------------------------------------------------------------------- the real torchrun, the real CLI
def launch(*args: str, nproc: int | None = None, env: dict | None = None,
           timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """`python -m bagnet_lib ARGS`, or under `torchrun --standalone --nproc_per_node=NPROC` (a free port of its own)."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("BAGNET_DATA", "BAGNET_MANIFEST", "BAGNET_FAULT")}
    full_env.update({"BAGNET_NO_DOWNLOAD": "1", "BAGNET_DIST_TIMEOUT": "60", **(env or {})})
    runner = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    return subprocess.run([sys.executable, *runner, "-m", "bagnet_lib", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


TRAIN = ("train", "--model", "bagnet33", "--profile", "smoke", "--set", "epochs=2", "--no-progress")


def _train(run_dir: Path, nproc: int | None = None, **env) -> subprocess.CompletedProcess:
    proc = launch(*TRAIN, "--run-dir", str(run_dir), nproc=nproc, env=env)
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, synthetic_root) -> Path:
    """A smoke run directory with its split and decoded images, and no training: each test copies it."""
    from bagnet_lib.course.pipeline import prepare_run

    run = prepare_run(tmp_path_factory.mktemp("prepared") / "run", "smoke", synthetic_root, progress=False)
    for split in ("train", "val", "test"):
        run.tensors(split, progress=False)
    return run.run_dir


def _copy(prepared: Path, dest: Path) -> Path:
    shutil.copytree(prepared, dest)
    return dest


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> dict:
    """The same smoke training (2 epochs) as a plain process, under torchrun with 1 process and with 2."""
    base = tmp_path_factory.mktemp("trained")
    out = {}
    for key, nproc in (("plain", None), ("ws1", 1), ("ws2", 2)):
        run_dir = _copy(prepared, base / key)
        proc = _train(run_dir, nproc, BAGNET_TRACE_BATCHES=str(base / f"{key}_trace"))
        assert proc.returncode == 0, (key, proc.stderr[-3000:])
        out[key] = {"dir": run_dir, "proc": proc, "trace": base / f"{key}_trace"}
    return out


def _states(run_dir: Path) -> dict:
    ck = run_dir / "checkpoints"
    return {name: torch.load(ck / f"bagnet33_{name}.pt", weights_only=True)["model"] for name in ("best", "last")}


def _assert_same_training(a: Path, b: Path) -> None:
    sa, sb = _states(a), _states(b)
    for name in sa:
        assert sa[name].keys() == sb[name].keys()
        assert all(torch.equal(sa[name][k], sb[name][k]) for k in sa[name]), f"{name}.pt differs"
    ha, hb = (pd.read_csv(d / "results" / "bagnet33_history.csv").drop(columns="seconds") for d in (a, b))
    pd.testing.assert_frame_equal(ha, hb)
    assert len(ha) == 2


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "results" / "bagnet33_metrics.json").read_text())


def _trace(path: Path) -> dict[tuple[int, int], list[list[int]]]:
    """(epoch, step) → the images of each rank in that step, in rank order."""
    steps: dict[tuple[int, int], dict[int, list[int]]] = {}
    for file in sorted(path.glob("rank*.jsonl")):
        for line in file.read_text().splitlines():
            r = json.loads(line)
            steps.setdefault((r["epoch"], r["step"]), {})[r["rank"]] = r["indices"]
    return {k: [v[r] for r in sorted(v)] for k, v in steps.items()}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_torchrun_with_one_process_is_bit_identical_to_the_plain_run(trained):
    _assert_same_training(trained["plain"]["dir"], trained["ws1"]["dir"])
    plain, ws1 = (trained[k]["dir"] / "results" / "bagnet33_test_predictions.csv" for k in ("plain", "ws1"))
    assert plain.read_bytes() == ws1.read_bytes()
    assert (_metrics(trained["plain"]["dir"])["backend"], _metrics(trained["ws1"]["dir"])["backend"]) == ("none", "gloo")
    assert _metrics(trained["ws1"]["dir"])["world_size"] == 1


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_processes_see_the_images_of_one_in_every_global_step(trained):
    one, two = _trace(trained["plain"]["trace"]), _trace(trained["ws2"]["trace"])
    assert list(one) == list(two) and len(one) == 2 * 2  # 2 epochs of 2 steps (42 training images, batch 16)
    for key in one:
        assert len(two[key]) == 2 and [len(s) for s in two[key]] == [8, 8], key  # per-rank batch = 16 / 2
        assert two[key][0] + two[key][1] == one[key][0], key


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_processes_train_with_rank_0_writing_and_the_metrics_record_the_world(trained):
    run_dir, proc = trained["ws2"]["dir"], trained["ws2"]["proc"]
    m = _metrics(run_dir)
    assert (m["world_size"], m["backend"]) == (2, "gloo") and m["best_epoch"] in (1, 2)
    state = torch.load(run_dir / "checkpoints" / "bagnet33_last.pt", weights_only=True)
    assert state["trained_with"] == [{"world_size": 2, "backend": "gloo"}] * 2
    assert proc.stdout.count("bagnet33: best epoch") == 1  # rank 0 alone prints
    assert not list(run_dir.rglob(".*.tmp"))
    # a finished run returns at once: the same command again trains nothing and changes no checkpoint
    before = (run_dir / "checkpoints" / "bagnet33_last.pt").read_bytes()
    again = _train(run_dir, 2)
    assert again.returncode == 0 and (run_dir / "checkpoints" / "bagnet33_last.pt").read_bytes() == before


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_blackout_command_on_two_processes_writes_what_one_process_writes(trained, tmp_path):
    """The logit cache and pixel blackout sharded over 2 ranks by the CLI (smoke is bf16: exact at any thread count)."""
    base = shutil.copytree(trained["ws2"]["dir"], tmp_path / "base")
    proc = launch("train", "--model", "resnet50", "--profile", "smoke", "--run-dir", str(base), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]  # pixel blackout compares both networks
    dirs = {key: shutil.copytree(base, tmp_path / key) for key in ("one", "two")}
    for key, nproc in (("one", None), ("two", 2)):
        proc = launch("blackout", "--experiments", "paper", "pixel", "--profile", "smoke", "--run-dir", str(dirs[key]),
                      "--no-progress", nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("pixel: ") == 1  # rank 0 alone prints
    one, two = (torch.load(d / "cache" / "bagnet33_test_logits.pt", weights_only=True) for d in dirs.values())
    assert all(torch.equal(one[k], two[k]) if isinstance(one[k], torch.Tensor) else one[k] == two[k] for k in one)
    for name in ("paper", "pixel"):
        a, b = (pd.read_csv(d / "results" / f"blackout_{name}.csv") for d in dirs.values())
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert set(pd.read_csv(dirs["two"] / "results" / "blackout_pixel.csv")["model"]) == {"resnet50", "bagnet33"}


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_rank_killed_at_a_named_point_fails_the_job_and_the_rerun_ends_identical(trained, prepared, tmp_path):
    run_dir = _copy(prepared, tmp_path / "run")
    # rank 1 dies after its 3rd optimizer step (the first of epoch 2); torchrun ends rank 0 and fails the job.
    # The bound on "fails in bounded time" is the launch's timeout: a hang raises TimeoutExpired here.
    killed = _train(run_dir, 2, BAGNET_FAULT="after_batch#3@1")
    assert killed.returncode != 0, killed.stdout[-2000:]
    assert "bagnet33: best epoch" not in killed.stdout
    assert torch.load(run_dir / "checkpoints" / "bagnet33_last.pt", weights_only=True)["epoch"] == 1
    resumed = _train(run_dir, 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_training(trained["ws2"]["dir"], run_dir)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bad_settings_are_one_paragraph_from_rank_0_before_any_training(prepared, tmp_path):
    cases = [
        (dict(nproc=3), ("cannot be split over 3 processes",)),
        (dict(nproc=2, env={"CUDA_VISIBLE_DEVICES": ""}, device="cuda"), ("NCCL needs one GPU per process",)),
        (dict(nproc=2, profile="cpu"), ("holds a run with profile 'smoke'", "another --run-dir")),
    ]
    for i, (case, needles) in enumerate(cases):
        run_dir = _copy(prepared, tmp_path / f"run{i}")
        args = ["train", "--model", "bagnet33", "--profile", case.get("profile", "smoke"), "--run-dir", str(run_dir),
                "--no-progress", *(("--device", case["device"]) if "device" in case else ())]
        proc = launch(*args, nproc=case["nproc"], env=case.get("env"))
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, proc.stderr[-3000:]  # once, from rank 0
        assert all(n in errors[0] for n in needles), errors[0]
        # no rank shows a traceback; torchrun itself ends with its own report (ChildFailedError, exit codes)
        assert proc.stderr.count("Traceback") == 1 and "ChildFailedError" in proc.stderr
        assert proc.stderr.index(errors[0]) < proc.stderr.index("Traceback")
        assert not (run_dir / "checkpoints").exists()  # nothing trained, nothing written


# a recipe that fits the 40 training images of the smoke split within 60 steps: AdamW, no weight decay, and
# whole-image crops (crop_scale_min=1), so that the images stay learnable at 64 px and width 0.125
WORKING = ("--set", "epochs=30", "--set", "optimizer=adamw", "--set", "lr=0.003", "--set", "weight_decay=0.0",
           "--set", "crop_scale_min=1.0")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_real_networks_train_to_a_working_model_on_two_processes(prepared, tmp_path):
    """ResNet-50 and BagNet-33 through the CLI at world size 2 on the synthetic flowers: the training loss falls
    far below chance (ln 5 = 1.61) and the training accuracy, measured on the global batches, far above 1/5."""
    run_dir = _copy(prepared, tmp_path / "run")
    for model in ("resnet50", "bagnet33"):
        proc = launch("train", "--model", model, "--profile", "smoke", "--run-dir", str(run_dir), "--no-progress",
                      *WORKING, nproc=2)
        assert proc.returncode == 0, proc.stderr[-3000:]
        hist = pd.read_csv(run_dir / "results" / f"{model}_history.csv")
        assert json.loads((run_dir / "results" / f"{model}_metrics.json").read_text())["world_size"] == 2
        first, last = hist.iloc[:3].mean(), hist.iloc[-3:].mean()
        assert len(hist) == 30 and last["train_loss"] < min(first["train_loss"] - 0.4, 1.25), (model, hist)
        assert last["train_acc"] > 0.45, (model, hist)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_gpu_check_script_runs_on_the_cpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BAGNET_FAULT"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--device", "cpu", "--profile", "smoke", "--steps", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("BENCH_DDP ")]
    assert [r["model"] for r in lines] == ["resnet50", "bagnet33"]
    for r in lines:
        assert (r["world_size"], r["backend"], r["steps"]) == (1, "gloo", 2)
        assert r["train_images_per_s"] > 0 and r["eval_images_per_s"] > 0 and r["eval_logits_finite"]
