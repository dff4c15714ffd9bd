"""The generated blocks of the README and docs/: text between `<!-- name:start -->` and `<!-- name:end -->`.

A block lives in the README or in one page of `docs/` beside it (`results` in README.md; `timings` and the
`bench-*` blocks of `bench … --readme` in docs/performance.md, distributed.md and imagenet.md; `tuning` in
docs/profiles.md); each writer names
the README and the block, and this module finds the file that holds it. `publish` rewrites `results` and
`timings` from a published run (its summary.json and the runner's timings.json); `bench … --readme` and
`tune … --readme` rewrite their own blocks. This module is the one place that edits README.md and docs/.
"""
from __future__ import annotations

from pathlib import Path

from bagnet_lib.io import write_text
from bagnet_lib.nets.models import model_label
from bagnet_lib.writeup.report import adaptation_phrase, seed_table, table1, training_crops, verdict_lines

NOTEBOOK_LABELS = {"01_data_exploration.ipynb": "01 data", "02_train_resnet50.ipynb": "02 ResNet-50",
                   "03_train_bagnet.ipynb": "03 BagNet", "04_blackout_experiments.ipynb": "04 blackout",
                   "05_writeup.ipynb": "05 write-up"}


def results_block(summary: dict, timings: dict | None = None) -> str:
    """The README's results section for a published run: Table 1, verdicts, the two key figures."""
    s, name, b = summary["setting"], summary["profile"], summary["bagnet"]
    minutes = f"{sum(timings.values()) / 60:.1f} min" if timings else "a time that was not recorded"
    adapted = adaptation_phrase(s, " then ")
    crops = "; ".join(part for part in (training_crops(s, b, "training crops "), adapted) if part)
    crops = f" ({crops})" if crops else ""
    weights = "ImageNet-pretrained" if s["pretrained"] else "from scratch"
    lines = [f"Reference run: profile `{name}` ({weights}: {s['image_size']} px{crops}, a {s['grid'][0]}×{s['grid'][1]} "
             f"patch grid, width {s['width']}, ResNet-50 {s['epochs']['resnet50']} / {model_label(b)} "
             f"{s['epochs'][b]} epochs), {s['split']}, seed {summary['seed']}, {summary['n_test']} test images; all "
             f"five notebooks took {minutes} on this project's 2-core machine. Full report: [REPORT.md](REPORT.md); "
             f"numbers: `results/{name}/summary.json`.", "",
             "Table 1, this run next to the paper's (the paper retrained the last layer of ImageNet-pretrained networks; "
             "this run trains from scratch, so absolute accuracies are not expected to match):", ""]
    lines += table1(summary)
    if summary.get("seeds"):
        n = summary["seeds"]["spread"]["n"]
        lines += ["", f"The seed study: {n} training seeds of this course (`results/{name}/seeds.csv`, written by "
                  "`make seeds`), each with its test accuracies and the change each blackout causes:", ""]
        lines += seed_table(summary)
    lines += ["", "The paper's claims, one verdict per claim and reading, each with the numbers it rests on "
              "(definitions and figures in REPORT.md):", ""]
    lines += verdict_lines(summary)
    lines += ["", f"![Accuracy and cross-entropy vs fraction of patches dropped](figures/{name}/04_drop_curve.png)", "",
              f"![Test accuracy against GFLOPs per image](figures/{name}/04_frontier.png)", ""]
    return "\n".join(lines)


def timings_block(profile: str, timings: dict | None) -> str:
    """One table row per notebook: the published run's wall times (the runner's timings.json)."""
    t = timings or {}
    names = [n for n in NOTEBOOK_LABELS if n in t]
    if not names:
        return f"No per-notebook times were recorded for the `{profile}` run."
    return "\n".join([f"`{profile}` profile, the published run (seconds per notebook):", "",
                      "| " + " | ".join(NOTEBOOK_LABELS[n] for n in names) + " | total |",
                      "| " + " | ".join("---" for _ in names) + " | --- |",
                      "| " + " | ".join(f"{t[n]:.0f}" for n in names) + f" | {sum(t[n] for n in names) / 60:.1f} min |"])


def replace_block(text: str, name: str, content: str) -> str:
    """Replace what lies between `<!-- name:start -->` and `<!-- name:end -->` in `text`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text or text.index(start) > text.index(end):
        raise ValueError(f"README has no '{start}' … '{end}' block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content.strip()}\n{end}{tail}"


def block_files(readme: str | Path) -> list[Path]:
    """The files that may hold a generated block: the README, then the pages of docs/ beside it."""
    readme = Path(readme)
    return [readme, *sorted((readme.parent / "docs").glob("*.md"))]


def _holder(readme: str | Path, name: str) -> Path | None:
    """The file (README or a docs/ page) with a `name` block, or None."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    for path in block_files(readme):
        if path.is_file():
            text = path.read_text()
            if start in text and end in text:
                return path
    return None


def update_block(readme: str | Path, name: str, content: str) -> bool:
    """Rewrite the `name` block in whichever of the README and docs/ pages holds it; False (and nothing
    written) if none does."""
    return update_blocks(readme, {name: content})


def update_blocks(readme: str | Path, blocks: dict[str, str]) -> bool:
    """Rewrite several blocks, each in the file that holds it; False (and nothing written) unless every one is found."""
    holders = {name: _holder(readme, name) for name in blocks}
    if None in holders.values():
        return False
    texts = {path: path.read_text() for path in set(holders.values())}
    new = dict(texts)
    for name, content in blocks.items():
        new[holders[name]] = replace_block(new[holders[name]], name, content)
    for path, text in new.items():
        if text != texts[path]:
            write_text(path, text)
    return True


def update_readme(readme: str | Path, summary: dict, timings: dict | None = None) -> bool:
    """Rewrite the `results` and `timings` blocks from a published run; False (and nothing written) unless both
    are found (in the README or docs/ beside it)."""
    return update_blocks(readme, {"results": results_block(summary, timings),
                                  "timings": timings_block(summary["profile"], timings)})
