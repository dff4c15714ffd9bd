"""`bench evaluation`: does compiling the evaluation passes pay on this machine?

Every evaluation of the course (validation, test predictions, the logit cache, pixel blackout, `verify`) is a
forward pass through `precision.features_fp32`. This benchmark runs it for each network as the `cpu` profile
evaluates (224 px, batches of `eval_batch_size`, its precision, channels-last, BatchNorm calibrated on the same
images so that the logits have a trained network's scale): eagerly, and inside `compiled.compiled_evaluation`
(inductor with freezing), alternated pass by pass. It reports

- images/s of each, over whole passes after the first compiled one;
- `compile_s`: the first compiled pass's extra time over an eager pass (compilation, once per process and batch
  shape), and `break_even_images`: how many images a process must evaluate before compiling has paid for itself;
- the largest logit difference against eager, relative to the largest eager logit, and whether every prediction
  is the same.

`course_images` counts what the course evaluates per network after training (the train, validation and test
splits once; pixel blackout's passes over the test split), so the verdict says where compilation pays.
"""
from __future__ import annotations

import time

import torch

from bagnet_lib.bench.common import calibrate_batchnorm
from bagnet_lib.blackout.sweep import PAPER_FRACS
from bagnet_lib.data.tensors import normalize
from bagnet_lib.nets.compiled import compiled_evaluation
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.precision import resolve_precision
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.train import predict

MODELS = ("resnet50", "bagnet33")
NUM_CLASSES = 5
# What the cpu course evaluates per network after training on the paper's split (2,968 / 848 / 426 images): the
# three splits once (pipeline.train_step) and pixel blackout's passes over the test split
SPLIT_IMAGES = {"train": 2968, "val": 848, "test": 426}


def _settings(quick: bool) -> dict:
    return {"images": 24, "rounds": 1, "size": 64} if quick else {"images": 160, "rounds": 3, "size": None}


def pixel_passes() -> int:
    """Pixel blackout's forward passes over the test split in the cpu profile: the paper's fractions × seeds
    (`blackout.study.blackout_experiment`)."""
    return len(PAPER_FRACS) * get_profile("cpu").pixel_seeds


def run(quick: bool = False) -> dict:
    """Eager against compiled evaluation for both networks; JSON-ready numbers."""
    t_start = time.perf_counter()
    s = _settings(quick)
    p = get_profile("cpu")
    size = s["size"] or p.image_size
    precision = resolve_precision(p.precision, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (s["images"], 3, size, size), dtype=torch.uint8, generator=gen)
    course = SPLIT_IMAGES["train"] + SPLIT_IMAGES["val"] + SPLIT_IMAGES["test"] * (1 + pixel_passes())
    models = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name, NUM_CLASSES, width=p.width).to(memory_format=torch.channels_last)
        with torch.no_grad():
            calibrate_batchnorm(model, (normalize(images[i:i + p.eval_batch_size])
                                        for i in range(0, len(images), p.eval_batch_size)))
        t0 = time.perf_counter()
        eager = predict(model, images, p.eval_batch_size, precision=precision)
        eager_s = [time.perf_counter() - t0]
        with compiled_evaluation(model):
            t0 = time.perf_counter()
            compiled = predict(model, images, p.eval_batch_size, precision=precision)
            first_s = time.perf_counter() - t0
        compiled_s = []
        for _ in range(s["rounds"]):  # alternated: drift on a shared machine hits both
            with compiled_evaluation(model):  # the compilation is kept: the weights did not change
                t0 = time.perf_counter()
                again = predict(model, images, p.eval_batch_size, precision=precision)
                compiled_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            eager_again = predict(model, images, p.eval_batch_size, precision=precision)
            eager_s.append(time.perf_counter() - t0)
        eager_ips = len(images) * len(eager_s) / sum(eager_s)
        compiled_ips = len(images) * len(compiled_s) / sum(compiled_s)
        compile_s = max(0.0, first_s - len(images) / compiled_ips)
        saved_per_image = 1 / eager_ips - 1 / compiled_ips
        break_even = compile_s / saved_per_image if saved_per_image > 0 else None
        models[name] = {
            "eager_images_per_s": eager_ips, "compiled_images_per_s": compiled_ips,
            "speedup": compiled_ips / eager_ips, "compile_s": compile_s, "break_even_images": break_even,
            "course_images": course, "pays_in_course": break_even is not None and course > break_even,
            "course_seconds_saved": course * saved_per_image - compile_s,
            "max_abs_logit_diff": float((compiled - eager).abs().max()),
            "max_abs_logit": float(eager.abs().max()),
            "relative_logit_diff": float((compiled - eager).abs().max() / eager.abs().max()),
            "same_predictions": bool(torch.equal(compiled.argmax(1), eager.argmax(1))),
            "repeatable": bool(torch.equal(eager_again, eager) and torch.equal(again, compiled)),
        }
    return {"benchmark": "evaluation", "quick": quick, "image_size": size, "width": p.width,
            "eval_batch_size": p.eval_batch_size, "precision": precision, "images": len(images),
            "rounds": s["rounds"], "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "pixel_passes": pixel_passes(), "split_images": SPLIT_IMAGES, "models": models,
            "notes": ["random weights, BatchNorm calibrated on the benchmark's images (costs do not depend on "
                      "the weights); images/s over whole passes, the first compiled pass excluded",
                      "compile_s = first compiled pass - one compiled pass at the measured rate; break_even_images = "
                      "compile_s / (seconds saved per image)",
                      "course_images: the train, validation and test splits once, plus pixel blackout's passes over "
                      "the test split (pixel_passes), per network"],
            "wall_s": time.perf_counter() - t_start}


def format_table(result: dict) -> str:
    """The result as the bench-evaluation block of docs/performance.md (Markdown)."""
    r = result
    lines = [f"Evaluation as the `cpu` profile runs it ({r['image_size']} px, batches of {r['eval_batch_size']}, "
             f"{r['precision']}, channels-last, width {r['width']}, {r['torch_threads']} threads, {r['images']} images"
             f"{', quick run' if r.get('quick') else ''}): eager against `compiled_evaluation` (inductor, freezing).",
             "", "| model | eager images/s | compiled images/s | speed-up | compilation (s) | break-even (images) "
             "| images the course evaluates | pays? | largest logit difference (relative) | same predictions |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in r["models"].items():
        be = f"{m['break_even_images']:,.0f}" if m["break_even_images"] is not None else "never"
        lines.append(f"| {name} | {m['eager_images_per_s']:.0f} | {m['compiled_images_per_s']:.0f} | "
                     f"{m['speedup']:.2f}× | {m['compile_s']:.0f} | {be} | {m['course_images']:,} | "
                     f"{'yes' if m['pays_in_course'] else 'no'} ({m['course_seconds_saved']:+.0f} s) | "
                     f"{m['relative_logit_diff']:.1e} | {'yes' if m['same_predictions'] else 'no'} |")
    return "\n".join(lines)
