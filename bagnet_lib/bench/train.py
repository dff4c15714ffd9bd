"""`bench train`: training speed of ResNet-50 and BagNet-33 (the `cpu` profile) against the machine's limit.

For each model, at the `cpu` profile's settings (112 px, width 0.25, batch 32, SGD with momentum,
label smoothing), a training step (forward, cross-entropy, backward, optimizer step) is timed

- fed by this project's input pipeline: images decoded once into uint8 tensors in memory, augmented
  by `train_batches` (RandomResizedCrop + flip on tensors), `normalize`d; the time to produce the
  next batch is the *data wait* (the pipeline is synchronous, so all of it is waited for);
- fed by the paper's input pipeline (the baseline): `torchvision.datasets.ImageFolder` + PIL
  transforms (RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize) re-decoding the JPEGs
  every epoch through `DataLoader(num_workers=2, batch_size=32, shuffle=True)`; the data wait is
  the time blocked in `next(loader)`.

Achieved GFLOP/s = FLOPs of one training step (forward + backward, counted by
`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products; BatchNorm, ReLU and
the optimizer are not counted) / the time of a whole step including the data wait. The machine's
limit is the same run's fp32 matmul peak: `torch.mm` of 2048×2048 float32 matrices.

Speed options are tried as A/B comparisons in the same run, alternating arms so that drift on a
shared machine hits both (channels_last, 1 vs all threads, batch 64 vs 32), then, in the full run,
`torch.compile` (with the options kept so far) in a subprocess with a time limit, since compilation
cannot be interrupted in-process. A speed-only option that makes the step at least 5 % faster per
image is kept for the headline measurement (a kept `torch.compile` is then compiled again in-process,
during the untimed warm-up, mostly from the inductor cache the probe filled); batch 64 is reported but
never kept, because it changes the profile's recipe. The library's training code is not changed.
The quick run tries no options.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.folder import class_names, find_data_dir, list_images
from ..data.tensors import IMAGENET_MEAN, IMAGENET_STD, ImageTensors, base_size_for, decode_images, normalize, \
    train_batches
from ..errors import UserError
from ..models import build_model
from ..profiles import get_profile
from ..train import make_optimizer

MODELS = ("resnet50", "bagnet33")
NUM_CLASSES = 5
KEEP_THRESHOLD = 1.05  # an option is kept when it makes the step at least 5 % faster per image
COMPILE_LIMIT_S = 120  # torch.compile is kept only if its first (compiling) step took at most this
COMPILE_TIMEOUT_S = 240  # per model, for the whole probe subprocess: import, compile, a few steps


def _settings(quick: bool) -> dict:
    if quick:
        # No A/B tries: with one step per arm they would measure noise (and the first step of each
        # network shape is several times slower: oneDNN builds its kernels), so nothing is kept.
        return {"steps": 3, "warmup": 1, "baseline_steps": 2, "baseline_warmup": 1, "ab_rounds": 0, "ab_steps": 0,
                "ab_warmup": 0, "ab_options": (), "peak_calls": 3,
                "synthetic_per_class": 16, "real_subset": None, "compile": False}
    return {"steps": 10, "warmup": 2, "baseline_steps": 10, "baseline_warmup": 2, "ab_rounds": 2, "ab_steps": 3,
            "ab_warmup": 1, "ab_options": ("channels_last", "threads_1", "batch_64"), "peak_calls": 8,
            "synthetic_per_class": 40, "real_subset": 320, "compile": True}


# --------------------------------------------------------------------------- data
def _pick_real(root: Path, subset: int, seed: int = 0) -> list[tuple[str, str]]:
    """A seeded, class-balanced subset of `subset` images (path relative to root, class)."""
    samples = list_images(root)
    classes = class_names(root)
    per_class = max(1, subset // len(classes))
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        paths = sorted(s.path for s in samples if s.label == c)
        out += [(paths[i], c) for i in rng.permutation(len(paths))[: per_class * 2]]  # spares for bad files
    return out


def _prepare_data(settings: dict, size: int, tmp: Path) -> tuple[str, Path, ImageTensors]:
    """The benchmark's training images: a subset of the real flowers when found, else synthetic ones."""
    root = None if settings["real_subset"] is None else find_data_dir(None)
    base = base_size_for(size)
    if root is not None:
        source = "real"
        classes = class_names(root)
        per_class = max(1, settings["real_subset"] // len(classes))
        kept: dict[str, list[tuple[str, torch.Tensor]]] = {c: [] for c in classes}
        for rel, c in _pick_real(root, settings["real_subset"]):
            if len(kept[c]) >= per_class:
                continue
            try:  # the real folder may hold unreadable files: skip them (the audit would exclude them)
                kept[c].append((rel, decode_images(root, [rel], base, progress=False)[0]))
            except UserError:
                continue
        rows = [(rel, c, img) for c in classes for rel, img in kept[c]]
    else:
        from ..data.synthetic import generate_synthetic_dataset

        source = "synthetic"
        root = generate_synthetic_dataset(tmp / "synthetic", n_per_class=settings["synthetic_per_class"],
                                          image_size=128, seed=0, progress=False)
        classes = class_names(root)
        samples = list_images(root)
        imgs = decode_images(root, [s.path for s in samples], base, progress=False)
        rows = [(s.path, s.label, img) for s, img in zip(samples, imgs)]
    index = {c: i for i, c in enumerate(classes)}
    data = ImageTensors([r[2] for r in rows], torch.tensor([index[r[1]] for r in rows]), [r[0] for r in rows],
                        list(classes))
    return source, Path(root), data


def _ours(data: ImageTensors, size: int, batch_size: int, seed: int = 0):
    """This project's pipeline, epoch after epoch: augmented uint8 batches, normalised."""
    epoch = 0
    while True:
        for x, y in train_batches(data, size, batch_size, seed, epoch):
            yield normalize(x), y
        epoch += 1


def _baseline_loader(root: Path, paths: list[str], size: int, batch_size: int, num_workers: int):
    """The paper's pipeline: ImageFolder + PIL transforms, re-decoding every JPEG, through a DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    folder = datasets.ImageFolder(str(root), transform=tf)
    where = {Path(p).relative_to(root).as_posix(): i for i, (p, _) in enumerate(folder.samples)}
    idx = [where[p] for p in paths if p in where]
    loader = DataLoader(Subset(folder, idx), batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        drop_last=True, generator=torch.Generator().manual_seed(0))

    def batches():
        while True:  # a new epoch starts the workers again, as in the paper's loop
            yield from loader

    return batches(), len(idx)


# --------------------------------------------------------------------------- timing
def _new_model(name: str, profile, channels_last: bool = False):
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, width=profile.width).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, make_optimizer(model, profile)


def _train_step(model, opt, x, y, label_smoothing: float) -> float:
    logits = model(x)
    loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.item())


def _step_flops(model, opt, x, y, label_smoothing: float) -> int:
    """FLOPs of one training step (forward + backward), counted on a real batch (the step is taken)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _train_step(model, opt, x, y, label_smoothing)
    return int(counter.get_total_flops())


def _time_steps(model, opt, batches, warmup: int, steps: int, label_smoothing: float,
                channels_last: bool = False) -> dict:
    """Run `warmup` untimed then `steps` timed steps; data time = producing the next batch."""
    data_s = compute_s = 0.0
    images = 0
    per_step = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        _train_step(model, opt, x, y, label_smoothing)
        t2 = time.perf_counter()
        if i >= warmup:
            data_s += t1 - t0
            compute_s += t2 - t1
            images += len(y)
            per_step.append(t2 - t0)
    total = data_s + compute_s
    return {"steps": steps, "images": images, "data_s": data_s, "compute_s": compute_s, "total_s": total,
            "images_per_s": images / total, "data_wait_fraction": data_s / total, "s_per_step": per_step}


def _mm_peak(calls: int, n: int = 2048) -> dict:
    """fp32 matmul throughput: `torch.mm` of n×n matrices, 2n³ FLOPs per call (median and best)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)  # warm-up
    rates = []
    for _ in range(calls):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"median": statistics.median(rates), "best": max(rates), "calls": calls,
            "threads": torch.get_num_threads()}


class _Threads:
    """`with _Threads(n):` run with n intra-op threads, then restore."""

    def __init__(self, n: int):
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


# --------------------------------------------------------------------------- options tried
def _arm(option: str | None, default_threads: int, batch_size: int) -> dict:
    arm = {"threads": default_threads, "channels_last": False, "batch_size": batch_size}
    if option == "channels_last":
        arm["channels_last"] = True
    elif option == "threads_1":
        arm["threads"] = 1
    elif option == "batch_64":
        arm["batch_size"] = 64
    return arm


def _ab(name: str, option: str, profile, data: ImageTensors, settings: dict, default_threads: int) -> dict:
    """Default vs `option`, alternating arms for `ab_rounds` rounds; seconds per image of each arm."""
    arms = {"default": _arm(None, default_threads, profile.batch_size),
            option: _arm(option, default_threads, profile.batch_size)}
    state = {}
    for key, arm in arms.items():
        model, opt = _new_model(name, profile, arm["channels_last"])
        state[key] = (model, opt, _ours(data, profile.image_size, arm["batch_size"]))
    totals = {key: [0.0, 0] for key in arms}
    for _ in range(settings["ab_rounds"]):
        for key, arm in arms.items():
            model, opt, batches = state[key]
            with _Threads(arm["threads"]):
                r = _time_steps(model, opt, batches, settings["ab_warmup"], settings["ab_steps"],
                                profile.label_smoothing, arm["channels_last"])
            totals[key][0] += r["total_s"]
            totals[key][1] += r["images"]
    base_s, var_s = (totals[k][0] / totals[k][1] for k in arms)
    speedup = base_s / var_s
    speed_only = option != "batch_64"
    keep = speed_only and speedup >= KEEP_THRESHOLD
    if not speed_only:
        why = f"{speedup:.3f}x per image; reported only: batch 64 changes the profile's recipe (batch 32, lr)"
    elif keep:
        why = f"kept: {speedup:.3f}x per image (>= {KEEP_THRESHOLD:.2f}x)"
    else:
        why = f"not kept: {speedup:.3f}x per image (< {KEEP_THRESHOLD:.2f}x)"
    return {"option": option, "default_s_per_image": base_s, "option_s_per_image": var_s, "speedup": speedup,
            "kept": keep, "why": why, "rounds": settings["ab_rounds"], "steps_per_round": settings["ab_steps"]}


def _compile_probe(name: str, channels_last: bool = False, threads: int | None = None, rounds: int = 2) -> dict:
    """Run in a subprocess: eager vs `torch.compile` training steps on random batches (same shapes)."""
    if threads:
        torch.set_num_threads(threads)
    profile = get_profile("cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(profile.batch_size, 3, profile.image_size, profile.image_size, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (profile.batch_size,), generator=gen)
    eager, eager_opt = _new_model(name, profile, channels_last)
    comp_model, comp_opt = _new_model(name, profile, channels_last)
    compiled = torch.compile(comp_model)
    _train_step(eager, eager_opt, x, y, profile.label_smoothing)
    t0 = time.perf_counter()
    _train_step(compiled, comp_opt, x, y, profile.label_smoothing)
    compile_s = time.perf_counter() - t0
    _train_step(compiled, comp_opt, x, y, profile.label_smoothing)
    e, c = [], []
    for _ in range(rounds):
        for model, opt, out in ((eager, eager_opt, e), (compiled, comp_opt, c)):
            t0 = time.perf_counter()
            _train_step(model, opt, x, y, profile.label_smoothing)
            out.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "eager_s_per_step": statistics.median(e),
            "compiled_s_per_step": statistics.median(c), "speedup": statistics.median(e) / statistics.median(c)}


def _try_compile(name: str, channels_last: bool, threads: int, timeout_s: int = COMPILE_TIMEOUT_S) -> dict:
    """`_compile_probe` in a subprocess with a time limit (compilation cannot be interrupted in-process).

    Kept (the headline then compiles in-process, where the inductor cache the probe filled makes it
    quick) when its first step compiled within `COMPILE_LIMIT_S` and it made the step at least 5 % faster.
    """
    code = ("import json; from bagnet_lib.bench.train import _compile_probe; "
            f"print('RESULT ' + json.dumps(_compile_probe({name!r}, {channels_last!r}, {threads!r})))")
    t0 = time.perf_counter()
    base = {"option": "torch.compile", "tried": True, "channels_last": channels_last, "threads": threads,
            "timeout_s": timeout_s}
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {**base, "ok": False, "kept": False,
                "why": f"not kept: compiling plus a few timed steps took longer than {timeout_s} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**base, "ok": False, "kept": False, "why": f"not kept: failed ({tail[0][:200]})",
                "wall_s": time.perf_counter() - t0}
    r = json.loads(lines[-1][len("RESULT "):])
    in_time = r["compile_s"] <= COMPILE_LIMIT_S
    keep = in_time and r["speedup"] >= KEEP_THRESHOLD
    why = (f"{'kept' if keep else 'not kept'}: {r['speedup']:.3f}x per step in a separate process, first "
           f"(compiling) step {r['compile_s']:.0f} s{'' if in_time else f' > {COMPILE_LIMIT_S} s'} "
           "(a warm inductor cache in /tmp shortens it)")
    return {**base, "ok": in_time, "kept": keep, "why": why, "wall_s": time.perf_counter() - t0, **r}


# --------------------------------------------------------------------------- the benchmark
def _bench_model(name: str, profile, data: ImageTensors, root: Path, settings: dict, default_threads: int,
                 peak: float, try_compile: bool) -> dict:
    tried = [_ab(name, opt, profile, data, settings, default_threads) for opt in settings["ab_options"]]
    kept = {t["option"] for t in tried if t["kept"]}
    threads = 1 if "threads_1" in kept else default_threads
    channels_last = "channels_last" in kept
    compiled = False
    if try_compile:
        with _Threads(threads):
            c = _try_compile(name, channels_last, threads)
        tried.append(c)
        compiled = c["kept"]
    size, bs, ls = profile.image_size, profile.batch_size, profile.label_smoothing

    with _Threads(threads):
        model, opt = _new_model(name, profile, channels_last)
        batches = _ours(data, size, bs)
        x, y = next(batches)  # the first (untimed) step counts the FLOPs, eagerly
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        flops_step = _step_flops(model, opt, x, y, ls)
        step_model = torch.compile(model) if compiled else model
        t0 = time.perf_counter()
        warmup = max(2 if compiled else 0, settings["warmup"] - 1)  # compilation happens in the warm-up
        ours = _time_steps(step_model, opt, batches, warmup, settings["steps"], ls, channels_last)
        warmup_s = time.perf_counter() - t0 - ours["total_s"]

        loader, n_base = _baseline_loader(root, data.paths, size, bs, num_workers=2)
        base = _time_steps(step_model, opt, loader, settings["baseline_warmup"], settings["baseline_steps"], ls,
                           channels_last)
        del loader

    flops_per_image = flops_step / bs
    gflops = flops_per_image * ours["images_per_s"] / 1e9
    compute_gflops = flops_step * ours["steps"] / ours["compute_s"] / 1e9
    return {
        "images_per_s": ours["images_per_s"],
        "gflops": gflops,
        "compute_gflops": compute_gflops,
        "peak_gflops": peak,
        "fraction_of_peak": gflops / peak,
        "compute_fraction_of_peak": compute_gflops / peak,
        "data_wait_fraction": ours["data_wait_fraction"],
        "s_per_step": ours["total_s"] / ours["steps"],
        "data_s_per_step": ours["data_s"] / ours["steps"],
        "baseline_images_per_s": base["images_per_s"],
        "baseline_data_wait_fraction": base["data_wait_fraction"],
        "baseline_s_per_step": base["total_s"] / base["steps"],
        "baseline_data_s_per_step": base["data_s"] / base["steps"],
        "speedup_vs_baseline": ours["images_per_s"] / base["images_per_s"],
        "flops_per_image": flops_per_image,
        "flops_per_step": flops_step,
        "settings": {"threads": threads, "channels_last": channels_last, "compiled": compiled, "batch_size": bs},
        "warmup_s": warmup_s,
        "steps": ours["steps"],
        "baseline_steps": base["steps"],
        "baseline_images": n_base,
        "tried": tried,
    }


def run(quick: bool = False) -> dict:
    """Benchmark both models' training steps; JSON-ready numbers."""
    t_start = time.perf_counter()
    s = _settings(quick)
    profile = get_profile("cpu")
    default_threads = torch.get_num_threads()
    notes = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        source, root, data = _prepare_data(s, profile.image_size, Path(tmp))
        peak_runs = [_mm_peak(s["peak_calls"])]
        peak_1 = None
        if default_threads > 1 and "threads_1" in s["ab_options"]:
            with _Threads(1):
                peak_1 = _mm_peak(max(2, s["peak_calls"] // 2))
        if not s["compile"]:
            notes.append("quick run: no speed options tried (channels_last, threads, batch 64, torch.compile need "
                         "the full run's repeated, alternating measurements; compilation takes minutes here)")
        models = {}
        compile_ok = s["compile"]
        for name in MODELS:
            models[name] = _bench_model(name, profile, data, root, s, default_threads, peak_runs[0]["median"],
                                        compile_ok)
            if s["compile"] and not compile_ok:
                models[name]["tried"].append({"option": "torch.compile", "tried": False, "ok": False, "kept": False,
                                              "why": "not tried: it did not compile in time (or failed) for "
                                                     f"{MODELS[0]}"})
            c = next((t for t in models[name]["tried"] if t["option"] == "torch.compile"), None)
            if c is not None and not c["ok"]:  # did not compile in time (or failed): do not wait again
                compile_ok = False
                notes.append(f"torch.compile not tried after {name}: {c['why']}")
        peak_runs.append(_mm_peak(s["peak_calls"]))
    # The machine's limit: the better of the two peak measurements (start and end of the run).
    peak = max(p["median"] for p in peak_runs)
    for r in models.values():
        r["peak_gflops"] = peak
        r["fraction_of_peak"] = r["gflops"] / peak
        r["compute_fraction_of_peak"] = r["compute_gflops"] / peak
    notes += [
        "images_per_s and gflops include the data wait (the whole step); compute_gflops excludes it",
        "FLOPs count convolutions and matrix products (FlopCounterMode); BatchNorm, ReLU, additions and the "
        "optimizer are not counted, yet they take a large share of a width-0.25 network's step",
        "peak_gflops: median torch.mm 2048x2048 fp32 rate, the better of a measurement at the start and at the "
        "end of the run, with all threads",
        "baseline: its 2 DataLoader workers decode JPEGs on the same 2 cores as the training step, so much of its "
        "cost shows as a slower step (baseline_s_per_step), not as data wait",
    ]
    ratio = models["bagnet33"]["flops_per_image"] / models["resnet50"]["flops_per_image"]
    return {
        "benchmark": "train",
        "quick": quick,
        "data": source,
        "data_dir": str(root) if source == "real" else None,
        "train_images": len(data),
        "image_size": profile.image_size,
        "width": profile.width,
        "batch_size": profile.batch_size,
        "optimizer": {"name": profile.optimizer, "lr": profile.lr, "momentum": profile.momentum,
                      "weight_decay": profile.weight_decay, "label_smoothing": profile.label_smoothing},
        "torch_threads": default_threads,
        "steps": s["steps"],
        "warmup": s["warmup"],
        "baseline": {"pipeline": "ImageFolder + PIL RandomResizedCrop/RandomHorizontalFlip/ToTensor/Normalize",
                     "num_workers": 2, "batch_size": profile.batch_size, "shuffle": True,
                     "steps": s["baseline_steps"], "warmup": s["baseline_warmup"]},
        "peak_gflops": peak,
        "peak_runs": peak_runs,
        "peak_gflops_1thread": peak_1["median"] if peak_1 else None,
        "bagnet33_over_resnet50_flops": ratio,
        "models": models,
        "notes": notes,
        "wall_s": time.perf_counter() - t_start,
    }


def format_table(result: dict) -> str:
    r = result
    head = (f"bench train{' (quick)' if r.get('quick') else ''}: {r['data']} data ({r['train_images']} images), "
            f"{r['image_size']} px, width {r['width']}, batch {r['batch_size']}, {r['torch_threads']} threads; "
            f"fp32 mm peak {r['peak_gflops']:.1f} GFLOP/s")
    cols = ["model", "img/s", "data wait", "GFLOP/s", "of peak", "GFLOP/img", "baseline img/s", "base wait",
            "vs base", "kept"]
    rows = []
    for name, m in r["models"].items():
        st = m["settings"]
        kept = [k for k in ("channels_last", "compiled", "threads")
                if (st[k] != r["torch_threads"] if k == "threads" else st.get(k))]
        rows.append([name, f"{m['images_per_s']:.1f}", f"{100 * m['data_wait_fraction']:.1f} %",
                     f"{m['gflops']:.1f}", f"{100 * m['fraction_of_peak']:.1f} %",
                     f"{m['flops_per_image'] / 1e9:.2f}", f"{m['baseline_images_per_s']:.1f}",
                     f"{100 * m['baseline_data_wait_fraction']:.1f} %", f"{m['speedup_vs_baseline']:.2f}x",
                     ", ".join(f"{k}={m['settings'][k]}" for k in kept) or "-"])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    lines = [head, "  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    tried = [(name, t) for name, m in r["models"].items() for t in m["tried"]]
    if tried:
        lines.append("  tried:")
        lines += [f"    {name:<9} {t['option']:<14} {t['why']}" for name, t in tried]
    lines += [f"  note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines)
