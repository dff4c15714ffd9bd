"""`bench train`: the library's own training step in the `cpu` profile's setting, beside the setting it replaced.

What is timed is exactly what `train.train_model` runs for every batch: `train.epoch_batches` (the
decoded images, augmented by `train_batches`, prepared a batch ahead in a background thread) feeding
`train.train_on_batch` (normalise, forward under autocast, cross-entropy, backward, SGD step), as each network
trains with the profile (`Profile.for_model`: its training crop, batch size, precision, layout, compilation).
Three arms per model, alternated round by round so that drift on a shared machine hits all of them:

- `previous`: the profile's setting before the "course in half the time" issue (`PREVIOUS`: ResNet-50 on 128 px
  crops, BagNet-33 on 144 px crops, batch 32; bf16, channels-last, BagNets compiled), with live prefetch;
- `profile`: the profile's setting now, with live prefetch, as `train_model` runs it;
- `prebuilt`: the same network and step as `profile`, fed batches that were augmented before the timer started:
  the difference is what the augmentation thread costs the step on a 2-core machine (it shares the cores).

Compiled arms run through `compiled.CompiledOrEager` as `train_model` runs them; the first step (compilation
included) is `compile_s`, outside the timed steps. Per arm: images/s over whole steps, the *data wait* (time
blocked waiting for the next batch), and achieved GFLOP/s = FLOPs of one step at that arm's crop (forward +
backward, counted by `torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products) / time per
step, as a fraction of the bf16 matmul peak (the same run's `torch.mm` of 2048×2048 matrices). Then
`torch.profiler` records a few of the profile arm's steps: the top operators by their own CPU time say what
limits the step. The quick run (tests) uses tiny synthetic data and few steps.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bagnet_lib.data.folder import class_names, find_data_dir, list_images
from bagnet_lib.data.tensors import ImageTensors, base_size_for, decode_images, train_batches
from bagnet_lib.errors import UserError
from bagnet_lib.nets.compiled import CompiledOrEager
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.precision import resolve_precision
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.train import (
    epoch_batches,
    make_optimizer,
    train_on_batch,
    use_channels_last,
    use_compile,
)

MODELS = ("resnet50", "bagnet33")
NUM_CLASSES = 5
# The cpu profile's training settings before the "course in half the time" issue (what `previous` times)
PREVIOUS = {"resnet50": {"train_size": 128, "crop_scale_min": 0.16, "crop_scale_max": 0.5, "batch_size": 32},
            "bagnet33": {"train_size": 144, "crop_scale_min": 0.2, "crop_scale_max": 0.6, "batch_size": 32}}
TARGET_VS_PREVIOUS = {"bagnet33": 1.3}  # that targets for BagNet-33: 1.3× the images/s, or 45 % of the peak
TARGET_FRACTION_OF_PEAK = {"bagnet33": 0.45}
TOP_OPS = 12


def _settings(quick: bool) -> dict:
    if quick:
        return {"rounds": 1, "steps": 2, "warmup": 1, "peak_calls": 2, "peak_n": 512, "synthetic_per_class": 16,
                "real_subset": None, "profiled_steps": 1}
    return {"rounds": 5, "steps": 8, "warmup": 2, "peak_calls": 8, "peak_n": 2048, "synthetic_per_class": 40,
            "real_subset": 640, "profiled_steps": 4}


# --------------------------------------------------------------------------- data
def _pick_real(root: Path, subset: int, seed: int = 0) -> list[tuple[str, str]]:
    """A seeded, class-balanced subset of `subset` images (path relative to root, class), with spares."""
    samples = list_images(root)
    per_class = max(1, subset // len(class_names(root)))
    rng = np.random.default_rng(seed)
    out = []
    for c in class_names(root):
        paths = sorted(s.path for s in samples if s.label == c)
        out += [(paths[i], c) for i in rng.permutation(len(paths))[: per_class * 2]]
    return out


def _prepare_data(settings: dict, size: int, tmp: Path) -> tuple[str, ImageTensors]:
    """The benchmark's training images: a subset of the real flowers when found, else synthetic ones."""
    root = None if settings["real_subset"] is None else find_data_dir(None)
    base = base_size_for(size)
    if root is not None:
        source, classes = "real", class_names(root)
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
        from bagnet_lib.data.synthetic import generate_synthetic_dataset

        source = "synthetic"
        root = generate_synthetic_dataset(tmp / "synthetic", n_per_class=settings["synthetic_per_class"],
                                          image_size=128, seed=0, progress=False)
        classes = class_names(root)
        samples = list_images(root)
        imgs = decode_images(root, [s.path for s in samples], base, progress=False)
        rows = [(s.path, s.label, img) for s, img in zip(samples, imgs)]
    index = {c: i for i, c in enumerate(classes)}
    return source, ImageTensors([r[2] for r in rows], torch.tensor([index[r[1]] for r in rows]),
                                [r[0] for r in rows], list(classes))


# --------------------------------------------------------------------------- timing
def mm_peak(calls: int, n: int = 2048, dtype: torch.dtype = torch.float32) -> dict:
    """Matmul throughput: `torch.mm` of n×n matrices of `dtype`, 2n³ FLOPs per call (median and best)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    torch.mm(a, b)  # warm-up
    rates = []
    for _ in range(calls):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"median": statistics.median(rates), "best": max(rates), "calls": calls, "n": n,
            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads()}


def step_flops(name: str, profile, data: ImageTensors) -> int:
    """FLOPs of one training step (forward + backward) at the profile's batch size, counted on a real batch."""
    from torch.utils.flop_counter import FlopCounterMode

    model, opt = _new_model(name, profile)
    x, y = next(iter(epoch_batches(data, profile, 0, 0)))
    with FlopCounterMode(display=False) as counter:
        train_on_batch(model, opt, x, y, label_smoothing=profile.label_smoothing)
    return int(counter.get_total_flops())


def _new_model(name: str, profile, channels_last: bool = False):
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, width=profile.width, zero_init_residual=profile.zero_init_residual)
    model.train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, make_optimizer(model, profile)


class _Arm:
    """One configuration of the step: a model, its optimizer and an endless stream of epochs' batches (live, with
    the prefetch thread); `run(prebuilt=True)` feeds the same step batches augmented before the timer starts."""

    def __init__(self, name: str, profile, data: ImageTensors):
        device = torch.device("cpu")
        probe = build_model(name, NUM_CLASSES, width=profile.width)
        self.precision = resolve_precision(profile.precision, device)
        self.channels_last = use_channels_last(probe, device, profile.channels_last)
        self.compile = use_compile(probe, device, profile.compile)
        self.model, self.opt = _new_model(name, profile, self.channels_last)
        self.net = CompiledOrEager(self.model) if self.compile else self.model
        self.profile, self.data = profile, data
        self.batches = self._stream()
        self.timers = {False: _Timer(), True: _Timer()}  # live, prebuilt

    def _stream(self):
        epoch = 0
        while True:
            yield from epoch_batches(self.data, self.profile, 0, epoch)
            epoch += 1

    def step(self, x, y) -> None:
        train_on_batch(self.net, self.opt, x, y, precision=self.precision, channels_last=self.channels_last,
                       label_smoothing=self.profile.label_smoothing)

    def run(self, warmup: int, steps: int, prebuilt: bool = False) -> None:
        p = self.profile
        ready = iter([next(train_batches(self.data, p.train_crop, p.batch_size, 1000 + i, 0,
                                         scale_min=p.crop_scale_min, scale_max=p.crop_scale_max))
                      for i in range(warmup + steps)]) if prebuilt else self.batches
        timer = self.timers[prebuilt]
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            x, y = next(ready)
            t1 = time.perf_counter()
            self.step(x, y)
            t2 = time.perf_counter()
            if i >= warmup:
                timer.add(len(y), t1 - t0, t2 - t0)


class _Timer:
    def __init__(self):
        self.images, self.total_s, self.data_s = 0, 0.0, 0.0

    def add(self, images: int, data_s: float, total_s: float) -> None:
        self.images += images
        self.data_s += data_s
        self.total_s += total_s


def top_ops(arm: _Arm, steps: int, n: int = TOP_OPS) -> list[dict]:
    """The operators of `steps` of the arm's training steps (live batches) with the most own CPU time
    (`torch.profiler`): name, calls, seconds, share of the profiled time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        arm.run(0, steps)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"op": e.key, "calls_per_step": e.count / steps, "self_cpu_s": e.self_cpu_time_total / 1e6 / steps,
             "share": e.self_cpu_time_total / total} for e in events[:n]]


def _bench_model(name: str, profile, data: ImageTensors, settings: dict, peak: float) -> dict:
    previous_profile = replace(profile, **PREVIOUS[name])
    arms = {"previous": _Arm(name, previous_profile, data), "profile": _Arm(name, profile, data)}
    compile_s = {}
    for key, arm in arms.items():  # the one compilation of each arm, outside the timed steps
        arm.run(1, 0)
        if arm.compile:
            compile_s[key] = arm.net.compile_s
    for _ in range(settings["rounds"]):  # alternate: drift on a shared machine hits every arm
        arms["previous"].run(settings["warmup"], settings["steps"])
        arms["profile"].run(settings["warmup"], settings["steps"])
        arms["profile"].run(settings["warmup"], settings["steps"], prebuilt=True)
    out = {"compile_s": compile_s or None,
           "compile_fallback": next((a.net.fallback for a in arms.values() if a.compile and a.net.fallback), None)}
    flops_of = {key: step_flops(name, arm.profile, data) for key, arm in arms.items()}  # once per setting
    for key, arm, prebuilt in (("previous", arms["previous"], False), ("profile", arms["profile"], False),
                               ("prebuilt", arms["profile"], True)):
        t = arm.timers[prebuilt]
        p = arm.profile
        flops = flops_of["profile" if prebuilt else key]
        per_s = t.images / t.total_s
        gflops = flops / p.batch_size * per_s / 1e9
        out[key] = {"train_crop": p.train_crop, "batch_size": p.batch_size, "precision": arm.precision,
                    "channels_last": arm.channels_last, "compile": arm.compile, "prebuilt": prebuilt,
                    "images_per_s": per_s, "data_wait_fraction": t.data_s / t.total_s,
                    "flops_per_image": flops / p.batch_size, "gflops": gflops, "peak_gflops": peak,
                    "fraction_of_peak": gflops / peak, "images": t.images, "seconds": t.total_s}
    out["speedup_vs_previous"] = out["profile"]["images_per_s"] / out["previous"]["images_per_s"]
    out["augmentation_cost"] = 1 - out["profile"]["images_per_s"] / out["prebuilt"]["images_per_s"]
    out["top_ops"] = top_ops(arms["profile"], settings["profiled_steps"])
    return out


def run(quick: bool = False) -> dict:
    """Benchmark both models' training steps; JSON-ready numbers."""
    t_start = time.perf_counter()
    s = _settings(quick)
    profile = get_profile("cpu")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        source, data = _prepare_data(s, profile.image_size, Path(tmp))
        peak_runs = [mm_peak(s["peak_calls"], s["peak_n"], torch.bfloat16)]
        models = {name: _bench_model(name, profile.for_model(name), data, s, peak_runs[0]["median"])
                  for name in MODELS}
        peak_runs.append(mm_peak(s["peak_calls"], s["peak_n"], torch.bfloat16))
    peak = max(r["median"] for r in peak_runs)
    for m in models.values():  # the machine's limit: the better of the measurements at the start and the end
        for key in ("previous", "profile", "prebuilt"):
            m[key]["peak_gflops"] = peak
            m[key]["fraction_of_peak"] = m[key]["gflops"] / peak
    return {
        "benchmark": "train",
        "quick": quick,
        "data": source,
        "train_images": len(data),
        "image_size": profile.image_size,
        "width": profile.width,
        "profile_precision": profile.precision,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rounds": s["rounds"], "steps_per_round": s["steps"], "warmup_per_round": s["warmup"],
        "profiled_steps": s["profiled_steps"],
        "peak_gflops": {"bf16": peak},
        "peak_runs": peak_runs,
        "previous": PREVIOUS,
        "targets": {"speedup_vs_previous": TARGET_VS_PREVIOUS, "fraction_of_peak": TARGET_FRACTION_OF_PEAK},
        "models": models,
        "notes": [
            "images_per_s and gflops cover whole steps, data wait included; data_wait_fraction is the share of "
            "the step spent blocked on the next batch (prepared in a background thread, which shares the 2 cores)",
            "prebuilt: the profile arm's network and step on batches augmented before the timer started; "
            "augmentation_cost = 1 - live / prebuilt images/s",
            "FLOPs count convolutions and matrix products (FlopCounterMode) at each arm's crop; BatchNorm, ReLU, "
            "additions and the optimizer are not counted, yet they take a large share of a width-0.25 network's step "
            "(top_ops)",
            "peak_gflops: median bf16 torch.mm rate, the better of a measurement at the start and at the end",
            "compile_s: each compiled arm's first step, compilation included (once per process), not timed",
        ],
        "wall_s": time.perf_counter() - t_start,
    }


def format_table(result: dict) -> str:
    """The result as the bench-train block of docs/performance.md (Markdown): the arms, then the top operators."""
    r = result
    lines = [f"`cpu` profile's training step (width {r['width']}, {r['torch_threads']} threads, {r['data']} data"
             f"{', quick run' if r.get('quick') else ''}); bf16 matmul peak of this run: "
             f"**{r['peak_gflops']['bf16']:.0f} GFLOP/s** (2048×2048 `torch.mm`).", "",
             "| model | setting | crop | batch | images/s | vs previous | GFLOP/s | fraction of the bf16 peak "
             "| data wait |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    labels = {"previous": "previous profile", "profile": "the profile", "prebuilt": "the profile, batches built beforehand"}
    for name, m in r["models"].items():
        for key in ("previous", "profile", "prebuilt"):
            a = m[key]
            label = (f"{labels[key]} ({a['precision']}, {'channels-last' if a['channels_last'] else 'NCHW'}, "
                     f"{'torch.compile' if a['compile'] else 'eager'})")
            ratio = a["images_per_s"] / m["previous"]["images_per_s"]
            ratio_text = f"**{ratio:.2f}×**" if key == "profile" else f"{ratio:.2f}×"
            lines.append(f"| {name} | {label} | {a['train_crop']} px | {a['batch_size']} | {a['images_per_s']:.0f} | "
                         f"{ratio_text} | {a['gflops']:.0f} | {100 * a['fraction_of_peak']:.0f} % | "
                         f"{100 * a['data_wait_fraction']:.1f} % |")
    for name, m in r["models"].items():
        if m.get("compile_s"):
            lines += ["", f"{name}: compiled in " + ", ".join(f"{v:.0f} s ({labels[k]})" for k, v in m["compile_s"].items())
                      + f"; the augmentation thread costs the live step {100 * m['augmentation_cost']:.0f} % of the "
                      "prebuilt one's images/s."]
        else:
            lines += ["", f"{name}: the augmentation thread costs the live step {100 * m['augmentation_cost']:.0f} % "
                      "of the prebuilt one's images/s."]
    for name, m in r["models"].items():
        lines += ["", f"Top operators of {name}'s step in the profile's setting (`torch.profiler`, own CPU time per step):",
                  "", "| operator | calls per step | ms per step | share |", "| --- | --- | --- | --- |"]
        for op in m["top_ops"]:
            lines.append(f"| `{op['op'][:60]}` | {op['calls_per_step']:.0f} | {1000 * op['self_cpu_s']:.1f} | "
                         f"{100 * op['share']:.1f} % |")
    return "\n".join(lines)
