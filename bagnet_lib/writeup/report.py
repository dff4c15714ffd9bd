"""REPORT.md, the write-up of a run (notebook 05), rendered from results/summary.json.

It follows the notebook's order: the question, what this run did differently from the paper, Table 1, one
section per claim with its figure, numbers and verdict, limitations, what to do next. Every number comes
from the summary (written by `summary`), every figure from the registry (`figures`); the run directory is
all it reads. This module writes REPORT.md and nothing else.
"""
from __future__ import annotations

import json

from bagnet_lib.blackout.study import find
from bagnet_lib.figures.registry import caption, order, registered
from bagnet_lib.io import write_text
from bagnet_lib.nets.models import model_label
from bagnet_lib.nets.run import Run
from bagnet_lib.writeup.paper import (
    BAGNET_PAPER_URL,
    BAGNET_TITLE,
    CS229_CODE_URL,
    CS229_TITLE,
    PAPER_GRID,
    PAPER_IMAGE_SIZE,
    PUBLISHED_CHANNELS,
)
from bagnet_lib.writeup.seeds import NUMBERS, verdict_name

STRUCTURED_ROWS = (("center", "keep the centre, drop the outer ring"), ("border", "keep the border, drop the centre"),
                   ("topk", "keep the most confident patches (an oracle: ranked by the full-image prediction)"),
                   ("bottomk", "keep the least confident patches (likewise an oracle)"),
                   ("random", "random (30+ masks, for reference)"))


def structured_table(blackout: list[dict], bagnet: str = "bagnet33") -> list[str]:
    """Markdown rows of the structured-mask experiment (`mean` aggregation) at 25/50/75 % dropped."""
    lines = ["| patches dropped by | 25% | 50% | 75% |", "| --- | --- | --- | --- |"]
    for kind, label in STRUCTURED_ROWS:
        cells = [find(blackout, kind, frac, model=bagnet) for frac in (0.25, 0.5, 0.75)]
        lines.append(f"| {label} | " + " | ".join(f"{b['acc_mean']:.3f} (loss {b['loss_mean']:.3f})" if b else "–"
                                                 for b in cells) + " |")
    return lines


def drop_curve_table(curve: list[dict], bagnet: str = "bagnet33",
                     fracs=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)) -> list[str]:
    """Markdown rows of the drop curve at a few fractions, `mean` next to `zero` aggregation."""
    by = {(round(c["drop_frac"], 6), c["aggregation"]): c for c in curve if c["model"] == bagnet}
    lines = ["| dropped | masks | acc, `mean` [95% of masks in] | loss, `mean` | acc, `zero` | loss, `zero` |",
             "| --- | --- | --- | --- | --- | --- |"]
    for f in fracs:
        m, z = by.get((round(f, 6), "mean")), by.get((round(f, 6), "zero"))
        if m and z:
            lines.append(f"| {100 * f:.0f}% | {m['n_masks']} | {m['acc_mean']:.3f} [{m['acc_spread'][0]:.3f}, "
                         f"{m['acc_spread'][1]:.3f}] | {m['loss_mean']:.3f} | {z['acc_mean']:.3f} | {z['loss_mean']:.3f} |")
    return lines


def frontier_table(points: list[dict]) -> list[str]:
    """Markdown rows of the Pareto-optimal points (fewest GFLOPs for their accuracy), cheapest first."""
    front = sorted((p for p in points if p.get("pareto")), key=lambda p: p["gflops_per_image"])
    lines = ["| model | method | parameter | GFLOPs per image | accuracy [95% CI, bootstrap over test images] |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {p['model']} | {p['method']} | {p['parameter']} | {p['gflops_per_image']:.3f} | {p['acc']:.3f} "
              f"[{p['acc_ci_low']:.3f}, {p['acc_ci_high']:.3f}] |" for p in front]
    return lines


def _fmt_ci(ci, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return "[" + ", ".join(f.format(v) for v in ci) + "]" if ci else "–"


def table1(summary: dict) -> list[str]:
    """Markdown rows of Table 1: this run next to the paper, every interval named by its method."""
    lines = ["| setting | reading | this run: acc | 95% CI, bootstrap over test images | 95% of masks in | "
             "masked − all kept [95% CI, paired image bootstrap] | this run: loss | paper: acc | paper: loss |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary.get("table1", []):
        masks = (_fmt_ci(r["mask_spread"]) + f" ({r['n_masks']} masks)") if r.get("mask_spread") else (
            "1 mask" if r.get("n_masks") == 1 else "–")
        diff = f"{r['diff']:+.3f} {_fmt_ci(r['diff_ci'], True)}" if "diff" in r else "–"
        loss = f"{r['loss']:.3f}" if "loss" in r else "–"
        lines.append(f"| {r['setting']} | {r['reading']} | {r['acc']:.3f} | {_fmt_ci(r.get('acc_ci'))} | {masks} | "
                     f"{diff} | {loss} | {r['paper_acc']:.4f} | {r['paper_loss']:.4f} |")
    return lines


def verdict_lines(summary: dict, claims: str = "abcde") -> list[str]:
    """One Markdown bullet per verdict of the given claims: claim, reading, verdict, evidence, caveat."""
    out = []
    for v in summary.get("verdicts", []):
        if v["claim"][1] not in claims:
            continue
        caveat = f" *Caveat:* {v['caveat']}." if v.get("caveat") else ""
        over = v.get("numbers", {}).get("seed_verdict")
        seeds = f" (this seed; over the {len(v['numbers']['seed_changes'])} training seeds: **{over}**)" if over else ""
        out.append(f"- **{v['claim']}** — reading `{v['reading']}`: **{v['verdict']}**{seeds}. {v['evidence']}.{caveat}")
    return out


SEED_COLUMNS = ("resnet50_test_acc", "bagnet_test_acc", "gap", "patch_random25_change", "patch_random50_change",
                "patch_random75_change", "channel_random25_change", "channel_random50_change", "pixel50_bagnet_change",
                "pixel50_resnet50_change", "loss_null_c", "bagnet_pareto_points")


def seed_table(summary: dict) -> list[str]:
    """The seed study: one row per training seed, then mean, sd and the Student-t interval over seeds, then which
    verdicts the seeds share. Empty without a seed study."""
    study = summary.get("seeds")
    if not study:
        return []
    B, sp = model_label(summary["bagnet"]), study["spread"]

    def cell(col: str, v: float) -> str:
        if col == "bagnet_pareto_points":
            return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
        if col == "loss_null_c":
            return f"{v:.4f}"
        return f"{v:+.3f}" if col.endswith("change") or col == "gap" else f"{v:.3f}"

    head = [NUMBERS[c].replace("BagNet", B) for c in SEED_COLUMNS]
    lines = ["| seed | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for r in study["rows"]:
        lines.append(f"| {r['seed']} | " + " | ".join(cell(c, r[c]) for c in SEED_COLUMNS) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{cell(c, sp['mean'][c])}**" for c in SEED_COLUMNS) + " |")
    lines.append("| sd | " + " | ".join(f"{sp['sd'][c]:.3f}" if c != "loss_null_c" else f"{sp['sd'][c]:.4f}"
                                        for c in SEED_COLUMNS) + " |")
    lines.append("| 95% CI (t, seeds) | " + " | ".join(
        "[" + ", ".join(cell(c, x) for x in sp["t_ci"][c]) + "]" for c in SEED_COLUMNS) + " |")
    shared = "; ".join(f"{verdict_name(c)}: {v}" for c, v in sp["verdicts_shared"].items())
    differ = "; ".join(f"{verdict_name(c)}: " + ", ".join(f"seed {s} {v}" for s, v in by_seed.items())
                       for c, by_seed in sp["verdicts_differ"].items())
    lines += ["", f"Test accuracy and, for a blackout, its change from the same network with nothing dropped (masked − "
              f"all kept, mean over masks; patch: {B}'s patch logits left out of the mean; channel: `fc.weight` columns "
              "zeroed; pixel: image tiles painted grey), per training seed of the same course; (d) c is the averaging "
              "null's constant (loss increase ≈ c·f/(1−f)). The mean's interval is a Student-t interval over the "
              f"{sp['n']} seeds (wide with so few); a single seed's intervals above are over test images.", "",
              f"Verdicts every seed shares: {shared or 'none'}." + (f" Verdicts that differ: {differ}." if differ else
                                                                    " No verdict differs between the seeds.")]
    return lines


def setting_table(summary: dict) -> list[str]:
    """What the paper did next to what this run did: the settings every number below depends on."""
    s, b = summary["setting"], summary["bagnet"]
    trained = ("ImageNet-pretrained" + (", last layer retrained (backbone frozen)" if s["feature_extract"] else
                                        ", fine-tuned")) if s["pretrained"] else "from scratch (random initialisation)"
    crops = training_crops(s, b, ", training crops ")
    return ["| | the paper | this run |", "| --- | --- | --- |",
            f"| networks | ResNet-50, BagNet-33 | ResNet-50, {model_label(b)} (width {s['width']} of the published "
            "channel counts) |",
            f"| weights | ImageNet-pretrained, last layer retrained (its code freezes the backbones) | {trained} |",
            f"| resolution | 224 px, 24×24 grid of 33 px windows | {s['image_size']} px{crops}, {s['grid'][0]}×"
            f"{s['grid'][1]} grid of {s['window_px']} px windows |",
            f"| epochs | 50 | ResNet-50 {s['epochs']['resnet50']}, {model_label(b)} {s['epochs'][b]} (best validation "
            "epoch kept) |",
            f"| split | 70/20/10 | {s['split']}: {s['n_train']} / {s['n_val']} / {s['n_test']} images |",
            f"| precision | fp32 | {s['precision']} |"] + adaptation_rows(s, b)


def training_crops(s: dict, bagnet: str, lead: str) -> str:
    """`lead` + the training crops' sides where they differ from the test size ("" where they do not): one side,
    or each network's (summary's `setting`)."""
    crops = s["train_crop"] if isinstance(s["train_crop"], dict) else {"resnet50": s["train_crop"], bagnet: s["train_crop"]}
    if set(crops.values()) == {s["image_size"]}:
        return ""
    if len(set(crops.values())) == 1:
        return f"{lead}{crops['resnet50']} px"
    return lead + ", ".join(f"{model_label(m)} {side} px" for m, side in crops.items())


def adaptation_phrase(s: dict, joiner: str = ": ") -> str:
    """What each network did after training to adapt to the test size (`nets.adapt`), once when both did the same
    ("both networks: …"), "" when none did; `joiner` goes between a network's name and what it did."""
    adapted = {m: a for m, a in (s.get("adaptation") or {}).items() if a}
    if not adapted:
        return ""
    if len(adapted) == len(s["adaptation"]) > 1 and len(set(adapted.values())) == 1:
        return f"both networks{joiner}{next(iter(adapted.values()))}"
    return "; ".join(f"{model_label(m)}{joiner}{a}" for m, a in adapted.items())


def adaptation_rows(s: dict, bagnet: str) -> list[str]:
    """The setting table's row for the adaptation to the test size (`nets.adapt`), where there was one."""
    what = adaptation_phrase(s)
    if not what:
        return []
    return [f"| adapted to the test size after training | no (trained and tested at 224 px) | {what}, on the training "
            "images |"]


def channel_count(setting: dict) -> int:
    """The feature channels of the last layer (the `fc` input) of this run's networks: the published 2,048 × width."""
    return int(round(PUBLISHED_CHANNELS * setting["width"]))


def _figures(names: list[str], available: set[str], figure_dir: str) -> list[str]:
    lines = []
    for name in names:
        if name in available:
            lines += [f"![{caption(name)}]({figure_dir}/{name})", "", f"*{caption(name)}*", ""]
    return lines


SECTIONS = ("title", "question", "setting", "table1", "claim_a", "claims_bc", "claim_d", "structured", "claim_e",
            "limitations", "next", "more_figures")


def report_sections(summary: dict, figures: list[str] | set[str] = (), figure_dir: str = "figures",
                    timings: dict | None = None) -> dict[str, str]:
    """REPORT.md as named sections in the write-up's order (`SECTIONS`; a section without content is left out):
    notebook 05 shows them one by one, `render_report` joins them. `figures` are the PNG names the run made,
    `timings` the runner's."""
    available, b = {n for n in figures if registered(n)}, summary["bagnet"]
    B = model_label(b)
    embedded: list[str] = []
    sections: dict[str, str] = {}

    def fig(*names: str) -> list[str]:
        embedded.extend(names)
        return _figures(list(names), available, figure_dir)

    def close(name: str, lines: list[str]) -> None:
        if any(line.strip() for line in lines):
            sections[name] = "\n".join(lines).strip("\n") + "\n"

    synthetic = summary["synthetic_data"]
    lines = [f"# BagNet blackout: a reproduction report ({B})" + (" — SYNTHETIC-DATA RUN (not the flowers)"
                                                                   if synthetic else ""), ""]
    # the notebooks timed so far: 01–04 while notebook 05 writes the report, 01–05 when the seed study rewrites it
    minutes = (f" Notebooks {min(timings)[:2]}–{max(timings)[:2]} took {sum(timings.values()) / 60:.1f} min."
               if timings else "")
    lines += [f"Profile `{summary['profile']}`, seed {summary['seed']}, data `{summary['data_dir']}`, "
              f"{summary['n_test']} test images.{minutes}", ""]
    if synthetic:
        lines += ["> **These numbers come from the embedded synthetic dataset** (no real flowers were found). "
                  "They exercise the pipeline and say nothing about the paper's claims.", ""]
    close("title", lines)
    lines = []
    lines += ["## The question", "",
              f"The Stanford CS229 project report of Zou, Yan and Liu, *{CS229_TITLE}* ([code]({CS229_CODE_URL})), "
              "trains ResNet-50 and BagNet-33 on five classes of flowers. BagNet-33 (Brendel & Bethge, "
              f"[*{BAGNET_TITLE}*]({BAGNET_PAPER_URL}), ICLR 2019) is a ResNet-50 whose every output sees only a "
              "33×33 px window: it classifies by averaging a grid of *patch logits*. The paper then \"blacks out\" "
              "patches at test time (alternating, random 25/50/75 %) to ask how many patches a decision needs, hoping "
              "to save computation. Its text drops patches; its code zeroed feature channels of the last layer. Each "
              "claim below is tested in every reading that applies: `patch` (patch logits left out of the mean), "
              "`channel` (columns of `fc.weight` zeroed, what the code did), `model` (no blackout) and `compute` "
              "(FLOPs per image).", ""]
    close("question", lines)
    lines = ["## What this run did differently", ""] + setting_table(summary) + [""]
    if summary.get("leakage"):
        lines += [summary["leakage"], ""]
    lines += fig("01_split_counts.png")
    close("setting", lines)
    lines = ["## Table 1, next to the paper's", ""] + table1(summary)
    lines += ["", "Reading `model`: no blackout; `patch`: patch logits dropped before the mean (`mean` aggregation); "
              "`channel`: columns of `fc.weight` zeroed (the paper's code, which has no spatial grid: its alternating "
              "is index parity over channels; checkerboard and raster are this project's spatial analogues). The "
              "paper's \"train\" numbers are its best validation epoch (its logs say so), so they stand next to this "
              "run's best validation epoch; its BagNet is always BagNet-33. Intervals: a model's accuracy by a "
              "percentile bootstrap over test images; blackout rows show where 95 % of the random masks lie, and the "
              "paired image-bootstrap interval of (accuracy averaged over the masks) − (all patches kept). The "
              "paper's random 75% column repeats its 50% column (most likely a copy error); its Table 1 cannot be "
              "traced to one published run.", ""]
    lines += fig("02_resnet50_history.png", f"03_{b}_history.png")
    close("table1", lines)
    lines = [f"## Claim (a): is {B} comparable to ResNet-50?", ""] + verdict_lines(summary, "a") + [""]
    if summary.get("seeds"):
        n = summary["seeds"]["spread"]["n"]
        lines += [f"### How much is luck? {n} training seeds", ""] + seed_table(summary) + [""]
    lines += fig("02_resnet50_confusion.png", f"03_{b}_confusion.png")
    close("claim_a", lines)
    lines = ["## Claims (b) and (c): blackout at the paper's settings", "",
              "Test accuracy, mean over masks (pixel blackout: over seeds), and in brackets the change from the same "
              "model with nothing dropped: the models start from different accuracies, so compare the changes.", "",
              "| blackout | model | aggregation | 25% | 50% | 75% |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, model, agg, label in (("random", b, "mean", "patch logits, left out of the mean (paper's text)"),
                                    ("random", b, "zero", "patch logits, set to 0 (literal reading)"),
                                    ("channel_random", b, "mean", "fc.weight columns zeroed (paper's code)"),
                                    ("pixel", b, "model", "image tiles painted grey"),
                                    ("pixel", "resnet50", "model", "image tiles painted grey")):
        base = summary[model]["test"]["acc"]
        cells = [find(summary["blackout"], kind, f, agg, model) for f in (0.25, 0.5, 0.75)]
        lines.append(f"| {label} | {model} | {agg} | " + " | ".join(
            f"{c['acc_mean']:.3f} ({c['acc_mean'] - base:+.3f})" if c else "–" for c in cells) + " |")
    px = summary.get("pixel")
    if px:
        lines += ["", f"Pixel blackout paints out {px['tile_px']}×{px['tile_px']} px tiles, one per stride cell of the "
                  f"BagNet's patch grid ({px['grid'][0]}×{px['grid'][1]} tiles), with {px['fill']}, a new random "
                  f"choice per image. A {px['window_px']} px window covers {px['tiles_per_window']} tiles, so at 25 % "
                  f"of tiles dropped only about {100 * 0.75 ** px['tiles_per_window']:.1f} % of the windows stay "
                  "untouched: this removes information from most patches at once, unlike dropping 25 % of the patch "
                  "logits."]
    lines += [""] + verdict_lines(summary, "bc") + [""]
    lines += fig("04_blackout_masks.png", "04_mask_accuracy.png", "04_blackout_kinds.png")
    close("claims_bc", lines)
    lines = []
    if summary.get("drop_curve"):
        lines += [f"## Claim (d): what dropping patches does to accuracy and loss ({B}, random patch masks)", "",
                  "Each row: the same random masks scored with the dropped patch logits left out of the mean (`mean`) "
                  "and set to 0 (`zero`); the bracket is where 95 % of the masks lie. Every 5 % is in "
                  "`summary.json` and the figure. Each verdict compares a curve with its subsampling null "
                  "(`blackout.nulls`): what averaging a random subset of the bag does to each image, computed from "
                  "that image's own patch logits (or channel contributions), with nothing fitted.", ""]
        lines += drop_curve_table(summary["drop_curve"], b) + [""] + verdict_lines(summary, "d") + [""]
        lines += fig("04_drop_curve.png")
    close("claim_d", lines)
    lines = ["## Which patches matter (the paper's future work; no claim tested)", "",
              f"{B}, patch logits, `mean` aggregation, test accuracy: patches dropped by position or by confidence, "
              "next to random masks at the same fraction.", ""] + structured_table(summary["blackout"], b) + [""]
    lines += fig("04_structured.png", "04_aggregations.png")
    close("structured", lines)
    lines = []
    if summary.get("frontier"):
        c = summary["frontier_costs"]
        lines += ["## Claim (e): could blackout save computation?", "",
                  f"Forward FLOPs per image (FlopCounterMode: convolutions and matrix products) at {c['image_size']} px: "
                  f"dense {c['bagnet']} {c['bagnet_gflops']:.3f} GFLOPs, one of its {c['n_patches']} patches computed "
                  f"alone {c['bagnet_gflops_per_patch']:.4f} GFLOPs, so computing only the kept patches is cheaper "
                  f"below {100 * min(c['break_even_keep_frac'], 1):.0f} % kept; ResNet-50 {c['resnet_gflops']:.3f} "
                  f"GFLOPs. Training: {c['bagnet_epoch_s']:.0f} s ({c['bagnet']}) vs {c['resnet_epoch_s']:.0f} s "
                  "(ResNet-50) per epoch (median). Kept-patch accuracies come from the logit cache (the same numbers a "
                  f"sparse pass computes: checked on test images, largest difference {c['sparse_check_max_abs_diff']:.1e}); "
                  "anytime stops an image once the running mean's top-1 margin reaches the threshold. The points no "
                  "other point beats; every point is in `results/frontier.csv`, and wall-time break-evens of every "
                  "BagNet are measured by `python -m bagnet_lib bench sparse` (`results/bench/sparse.json`).", ""]
        lines += frontier_table(summary["frontier"]) + [""] + verdict_lines(summary, "e") + [""]
        lines += fig("04_frontier.png")
    close("claim_e", lines)
    study = (summary.get("seeds") or {}).get("spread")
    setting = summary["setting"]
    channels = channel_count(setting)
    lines = ["## Limitations", "",
              (f"- {study['n']} training seeds per network (the seed table under claim (a)); every other section shows "
               f"seed {summary['seed']} alone, and its intervals cover test images and masks, not training runs." if study
               else "- One training run per network (the seed above): no interval here covers a second training run, "
               "so the gap between the networks mixes architecture and luck."),
              "- " + ("ImageNet-pretrained backbones, as in the paper." if summary["pretrained"] else
                      f"Trained from scratch on {summary['setting']['n_train']:,} training images, unlike the paper's ImageNet-pretrained backbones: "
                      "absolute accuracies are not expected to match, and claim (a) tests a different comparison."),
              *([f"- {setting['image_size']} px and a {setting['grid'][0]}×{setting['grid'][1]} patch grid, where "
                 f"the paper had {PAPER_IMAGE_SIZE} px and {PAPER_GRID}×{PAPER_GRID}: the blackout curves depend on "
                 "how many patches there are."] if (setting["image_size"], *setting["grid"]) !=
                (PAPER_IMAGE_SIZE, PAPER_GRID, PAPER_GRID) else []),
              *([f"- Width {setting['width']}: the last layer has {channels:,} feature channels where the published "
                 f"networks have {PUBLISHED_CHANNELS:,}, so the channel reading masks other, fewer features than the "
                 "paper's code did."] if channels != PUBLISHED_CHANNELS else []),
              f"- {summary['n_test']} test images bound every interval (a 95 % interval on accuracy is several points "
              "wide), and duplicates across the split (above) inflate test accuracy a little.",
              "- The paper's Table 1 cannot be traced to one published run; its numbers are compared as printed.", ""]
    close("limitations", lines)
    lines = ["## What to do next", "",
              "- Run the `paper` profile where ImageNet weights can be downloaded, to test the claims in the paper's "
              "own setting.",
              *([] if study else ["- Train with several seeds (`make seeds`) to separate the architecture from the "
                                  "luck of one run."]),
              "- Change `BAGNET` in notebook 03 to `bagnet17` or `bagnet9`: smaller windows make sparse evaluation "
              "cheaper and the drop curve steeper or flatter (the frontier shows both).", ""]
    close("next", lines)
    lines = []
    rest = sorted((n for n in available if n not in embedded), key=order)
    if rest:
        lines += ["## More figures", ""] + _figures(rest, available, figure_dir)
    close("more_figures", lines)
    return sections


def render_report(summary: dict, figures: list[str] | set[str] = (), figure_dir: str = "figures",
                  timings: dict | None = None) -> str:
    """REPORT.md in the write-up's order; `figures` are the PNG names the run made, `timings` the runner's."""
    return "\n".join(report_sections(summary, figures, figure_dir, timings).values())




def run_report_sections(run: Run) -> dict[str, str]:
    """The sections of a run's REPORT.md, from its results/summary.json, the figures present and the runner's
    timings.json (figure links relative to the run directory): what notebook 05 shows and `write_report` writes."""
    summary = json.loads((run.results / "summary.json").read_text())
    timings_path = run.results / "timings.json"  # the runner's, written after each notebook
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else None
    return report_sections(summary, {p.name for p in run.figures.glob("*.png")}, timings=timings)


def write_report(run: Run) -> str:
    """Render RUN_DIR/REPORT.md (notebook 05): `run_report_sections` joined; return it."""
    text = "\n".join(run_report_sections(run).values())
    write_text(run.run_dir / "REPORT.md", text)
    return text
