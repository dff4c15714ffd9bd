"""`bench imagenet`: the streaming ImageNet pass's speed, the sweep's cost per batch, and its memory against N.

`worker` runs `course.imagenet.imagenet_study` in a fresh process on a fake validation folder
(`data.fake_imagenet`: 1,000 synsets of noise JPEGs at ImageNet-like sizes) with a randomly initialised
BagNet-33 at width 1.0 and a 1,000-class head, in fp32 with TF32 off (the precision of the published
weights), the default configuration set (`StreamSettings()`), batch 32 and the command's default DataLoader
workers; it prints one `BENCH_IMAGENET {json}` line: images/s of the whole pass (decoding included), seconds
of forward passes and of the sweeps (patch and channel masks), and the process's peak resident memory.

`run` launches the worker on 64 and on 512 images of the same folder, each in its own process, so that
each peak RSS belongs to one pass: the growth from 64 to 512 images is what N costs. The sweep's cost is
reported as a fraction of the forward passes' time in the same run (the target for the default set: < 10 %).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bagnet_lib.blackout.imagenet import StreamSettings, configuration_count
from bagnet_lib.course.imagenet import imagenet_study
from bagnet_lib.data.fake_imagenet import write_fake_val
from bagnet_lib.errors import UserError
from bagnet_lib.nets.models import bagnet33

MARK = "BENCH_IMAGENET "


def worker(val_dir: str, weights: str, subset: int, out: str, precision: str = "fp32",
           device: str | None = None, batch_size: int = 32) -> dict:
    """One pass over `subset` images; its timings, this process's peak RSS, and its resident memory after each
    batch (what stays between batches: the test that nothing accumulates with N)."""
    resident: list[float] = []
    page = os.sysconf("SC_PAGE_SIZE")

    def after_batch(_: int) -> None:
        with open("/proc/self/statm") as fh:
            resident.append(int(fh.read().split()[1]) * page / 2**20)

    s = imagenet_study(val_dir, "bagnet33", weights, out, StreamSettings(), batch_size=batch_size,
                       precision=precision, subset=subset, device=device, progress=False, on_batch=after_batch)
    t = s["timing_rank0"]
    return {"images": s["n_images"], "images_per_s": s["n_images"] / t["wall_s"], "wall_s": t["wall_s"],
            "forward_s": t["forward_s"], "sweep_s": t["sweep_s"], "sweep_fraction": t["sweep_s"] / t["forward_s"],
            "batches": t["batches_this_call"], "precision": s["precision"], "device": s["device"],
            "width": s["weights"]["width"], "classes": s["weights"]["classes"],
            "configurations": s["configurations"], "batch_size": s["batch_size"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "resident_after_batch_mb": resident,
            "threads": torch.get_num_threads()}


def _launch(val_dir: Path, weights: Path, subset: int, out: Path, device: str | None) -> dict:
    cmd = [sys.executable, "-m", "bagnet_lib.bench.imagenet", "--val-dir", str(val_dir), "--weights", str(weights),
           "--subset", str(subset), "--out", str(out)] + (["--device", device] if device else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise UserError(f"`{' '.join(cmd[1:])}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(lines[-1][len(MARK):])


def run(quick: bool = False, device: str | None = None, repeats: int = 2) -> dict:
    """64 and 512 images (quick: 64 and 128 at width 0.125 and 10 classes), each pass in its own process, the two
    sizes alternating `repeats` times: a peak RSS varies from one process to the next (when the allocator hands
    memory back, which batches the DataLoader holds in flight), and the repeats show by how much."""
    classes, width, sizes = (10, 0.125, (64, 128)) if quick else (1000, 1.0, (64, 512))
    repeats = 1 if quick else repeats
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_imagenet_") as tmp:
        tmp = Path(tmp)
        val = write_fake_val(tmp / "val", classes=classes, per_class=max(1, -(-max(sizes) // classes)), damaged=0)
        torch.manual_seed(0)
        weights = tmp / "random_bagnet33.pt"
        torch.save(bagnet33(num_classes=classes, width=width).state_dict(), weights)
        runs = {str(n): [] for n in sizes}
        for r in range(repeats):
            for n in sizes:
                runs[str(n)].append(_launch(val, weights, n, tmp / f"out{n}-{r}", device))
    passes = {n: {**rs[0], **{k: statistics.median(x[k] for x in rs) for k in
                              ("images_per_s", "forward_s", "sweep_s", "sweep_fraction", "peak_rss_mb")},
                  "peak_rss_mb_runs": [x["peak_rss_mb"] for x in rs]} for n, rs in runs.items()}
    small, large = (passes[str(n)] for n in sizes)
    return {"benchmark": "imagenet", "quick": quick, "cpus": os.cpu_count(), "repeats": repeats, "passes": passes,
            "rss_growth_mb": large["peak_rss_mb"] - small["peak_rss_mb"],
            "rss_spread_mb": max(max(p["peak_rss_mb_runs"]) - min(p["peak_rss_mb_runs"]) for p in passes.values()),
            "configurations": configuration_count(StreamSettings()), "wall_s": time.perf_counter() - t0}


def format_table(result: dict) -> str:
    """Images/s, the sweep's share of the forward time, and peak RSS, per pass (Markdown)."""
    first = next(iter(result["passes"].values()))
    c = result["configurations"]
    lines = [f"BagNet-33 at width {first['width']:g} with a {first['classes']}-class head (random weights), "
             f"{first['precision']} on {first['device']} ({first['threads']} threads, {result['cpus']} cores), batch "
             f"{first['batch_size']}, fake ImageNet JPEGs decoded by DataLoader workers; the default configuration set: "
             f"{c['patch']} patch and {c['channel']} channel configurations in the same pass. One process per pass, "
             f"medians of {result['repeats']} alternating passes of each size:", "",
             "| images | images/s (whole pass) | forward s | sweep s | sweep / forward | peak RSS (MB), each pass | "
             "resident after each batch (MB): first, max, last |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, p in result["passes"].items():
        each = ", ".join(f"{v:.0f}" for v in p["peak_rss_mb_runs"])
        res = p["resident_after_batch_mb"]
        lines.append(f"| {n} | {p['images_per_s']:.2f} | {p['forward_s']:.1f} | {p['sweep_s']:.2f} | "
                     f"{100 * p['sweep_fraction']:.1f} % | {each} | {res[0]:.0f}, {max(res):.0f}, {res[-1]:.0f} |")
    sizes = list(result["passes"])
    last = result["passes"][sizes[-1]]["resident_after_batch_mb"]
    held = last[-1] - last[0]
    lines += ["", f"From {sizes[0]} to {sizes[-1]} images the peak RSS (median) changes by {result['rss_growth_mb']:+.1f} "
                  f"MB; passes of the same size differ by up to {result['rss_spread_mb']:.1f} MB. Between batches the "
                  f"{sizes[-1]}-image pass holds {abs(held):.1f} MB {'more' if held >= 0 else 'less'} after its last "
                  f"batch than after its first ({len(last)} batches)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m bagnet_lib.bench.imagenet --val-dir D --weights W --subset N --out O`: one pass (the worker)."""
    ap = argparse.ArgumentParser(prog="python -m bagnet_lib.bench.imagenet", description=main.__doc__)
    ap.add_argument("--val-dir", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--subset", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None)
    args = ap.parse_args(argv)
    try:
        result = worker(args.val_dir, args.weights, args.subset, args.out, args.precision, args.device)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
