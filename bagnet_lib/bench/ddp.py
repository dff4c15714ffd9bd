"""`bench ddp`: what DistributedDataParallel costs on this machine, and the step the GPU check times.

`worker` runs under torchrun: every rank builds the network exactly as `train.train_model` does (the profile's
precision and layout, SyncBatchNorm on CUDA, DistributedDataParallel when there are several ranks), trains
`steps` optimizer steps with `train.train_on_batch` on its share (batch_size / world_size) of a fixed global
batch of random images at the profile's training crop, then evaluates once (`train.predict`, sharded) on
random images at the profile's test size; rank 0 prints one `BENCH_DDP {json}` line: global images/s of
training and of evaluation. Random images and a fixed batch isolate the step from the input pipeline (which
`bench train` times).

`run` launches the worker with `torchrun --standalone` at world size 1 and 2 on the CPU (gloo) and reports
the ratio of their training rates: on this 2-core machine, one process with 2 threads against two processes
with 1 thread each (torchrun's default OMP_NUM_THREADS=1) that also average gradients every step.
scripts/gpu_check.sh runs the worker in the `gpu` profile on CUDA (NCCL).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from bagnet_lib.errors import UserError
from bagnet_lib.nets.distributed import barrier, close_distributed, init_distributed
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.precision import resolve_precision
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.train import (
    check_world,
    distribute,
    make_optimizer,
    predict,
    select_device,
    train_on_batch,
    use_channels_last,
)

MODELS = ("resnet50", "bagnet33")
MARK = "BENCH_DDP "


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    barrier()


def worker(model_name: str, profile_name: str, steps: int, warmup: int = 3, device: str | None = None) -> dict:
    """Time `steps` DDP training steps and one sharded evaluation on this rank; the result (rank 0 prints it)."""
    w = init_distributed(device)
    p = get_profile(profile_name).for_model(model_name)
    check_world(p, p.batch_size * 10, w)
    dev = select_device(device)
    precision = resolve_precision(p.precision, dev)
    torch.manual_seed(0)
    model = build_model(model_name, 5, width=p.width, zero_init_residual=p.zero_init_residual).to(dev)
    channels_last = use_channels_last(model, dev, p.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net, model = distribute(model, dev, w)
    optimizer = make_optimizer(model, p)
    gen = torch.Generator().manual_seed(w.rank)
    share = p.batch_size // w.size
    images = torch.randint(0, 256, (share, 3, p.train_crop, p.train_crop), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 5, (share,), generator=gen)
    net.train()
    for _ in range(warmup):
        train_on_batch(net, optimizer, images, labels, precision=precision, channels_last=channels_last)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = train_on_batch(net, optimizer, images, labels, precision=precision, channels_last=channels_last)
    _sync(dev)
    train_s = time.perf_counter() - t0
    n_eval = p.eval_batch_size * 2 * w.size
    eval_images = torch.randint(0, 256, (n_eval, 3, p.image_size, p.image_size), dtype=torch.uint8,
                                generator=torch.Generator().manual_seed(1))
    t0 = time.perf_counter()
    logits = predict(model, eval_images, p.eval_batch_size, dev, precision=precision)
    _sync(dev)
    eval_s = time.perf_counter() - t0
    result = {"model": model_name, "profile": p.name, "world_size": w.size, "backend": w.backend,
              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "threads_per_rank": torch.get_num_threads(), "precision": precision, "channels_last": channels_last,
              "global_batch": p.batch_size, "warmup_steps": warmup, "steps": steps, "train_images_per_s": steps * p.batch_size / train_s,
              "eval_images": n_eval, "eval_images_per_s": n_eval / eval_s,
              "eval_logits_finite": bool(torch.isfinite(logits).all()), "final_loss": float(loss)}
    close_distributed()
    return result


def _launch(nproc: int, model: str, profile: str, steps: int, device: str) -> dict:
    """The worker under `torchrun --standalone --nproc_per_node=<nproc>`; rank 0's result."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "bagnet_lib.bench.ddp", "--model", model, "--profile", profile, "--steps", str(steps), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BAGNET_DIST_TIMEOUT": "300"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise UserError(f"`{' '.join(cmd[2:])}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(lines[-1][len(MARK):])


def run(quick: bool = False, repeats: int = 3) -> dict:
    """World size 1 against 2 on this CPU (gloo), for each network: training and evaluation images/s, ratios.

    The two world sizes alternate `repeats` times (1, 2, 1, 2, …) so that the machine's drift hits both alike;
    each rate is the median over the repeats, each ratio the median of the repeats' ratios."""
    profile, steps, repeats = ("smoke", 3, 1) if quick else ("cpu", 60, repeats)
    t0 = time.perf_counter()
    models = {}
    for name in MODELS:
        pairs = [tuple(_launch(n, name, profile, steps, "cpu") for n in (1, 2)) for _ in range(repeats)]
        entry: dict = {}
        for i, key in enumerate(("1", "2")):
            runs = [pair[i] for pair in pairs]
            entry[key] = {**runs[0], **{k: statistics.median(r[k] for r in runs)
                                        for k in ("train_images_per_s", "eval_images_per_s")},
                          "runs": [{k: r[k] for k in ("train_images_per_s", "eval_images_per_s")} for r in runs]}
        for kind in ("train", "eval"):
            entry[f"{kind}_ratio"] = statistics.median(
                b[f"{kind}_images_per_s"] / a[f"{kind}_images_per_s"] for a, b in pairs)
        models[name] = entry
    return {"benchmark": "ddp", "quick": quick, "profile": profile, "steps": steps, "repeats": repeats,
            "cpus": os.cpu_count(), "models": models, "wall_s": time.perf_counter() - t0}


def format_table(result: dict) -> str:
    """Images/s at world size 1 and 2 and their ratio, per network (Markdown)."""
    r = result
    m0 = next(iter(r["models"].values()))
    lines = [f"`{r['profile']}` profile ({m0['1']['precision']}, global batch {m0['1']['global_batch']}, "
             f"{r['steps']} timed steps after {m0['1']['warmup_steps']} warm-up steps, random images), {r['cpus']} CPU cores, gloo, "
             f"medians of {r['repeats']} alternating launches of each world size; "
             f"world size 1 runs {m0['1']['threads_per_rank']} threads, world size 2 runs "
             f"{m0['2']['threads_per_rank']} per rank:", "",
             "| model | train images/s, 1 process | 2 processes | ratio 2 / 1 | eval images/s, 1 | 2 | ratio 2 / 1 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in r["models"].items():
        lines.append(f"| {name} | {m['1']['train_images_per_s']:.1f} | {m['2']['train_images_per_s']:.1f} | "
                     f"{m['train_ratio']:.2f} | {m['1']['eval_images_per_s']:.1f} | {m['2']['eval_images_per_s']:.1f} | "
                     f"{m['eval_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m bagnet_lib.bench.ddp --model M --profile P --steps N [--device D]`: the worker (under torchrun)."""
    ap = argparse.ArgumentParser(prog="python -m bagnet_lib.bench.ddp", description=main.__doc__)
    ap.add_argument("--model", choices=MODELS + ("bagnet9", "bagnet17"), required=True)
    ap.add_argument("--profile", default="gpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    args = ap.parse_args(argv)
    try:
        result = worker(args.model, args.profile, args.steps, args.warmup, args.device)
    except UserError as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":
        print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
