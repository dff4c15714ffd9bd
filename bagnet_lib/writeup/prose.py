"""Hand-written prose checked against what it describes: the profiles (settings) and the published runs (numbers).

The README's results block, the report and the benchmark tables are generated, so they cannot drift; the prose
around them is typed, so it can. This module reads the hand-written text of the README, `docs/`, the READMEs of
`results/` and `notebooks/`, and every notebook's Markdown cells (generated `<!-- name:start -->` … `<!-- name:end
-->` blocks and fenced code left out), splits it into sentences, and checks every sentence that states

- a setting: training epochs, training-crop side, crop scale (a "lo–hi %" range next to "crop"), test image size,
  patch grid, network width, feature-channel count, learning rate, batch size. The value must be the one of the
  profile the sentence is about: a profile named in it (`cpu`, "the smoke profile"), else the reference profile
  `cpu` that the course runs (and the `paper` profile's value too where it speaks of the paper or the published
  networks). Within a sentence, a number belongs to the network named last before it (ResNet-50 or a BagNet);
- a measured number: a decimal with three or four places (an accuracy, a loss) or a number with a unit of
  measurement (GFLOP/s, images/s, GFLOPs, minutes, ×) must be one that a published results file holds
  (`known_numbers`: `results/**/*.json`, the seed table, the previous round as `results/<profile>/changes.md`
  records it) or the paper's own Table 1.

`check_repository` returns one `Finding` per false sentence, naming the file, the sentence, what it states and
what is true; the test suite fails on any. A sentence that must say something else (history, another program's
default) says it through a value that is allowed: torchvision's default crop scale (8–100 %) always is.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.profiles import PROFILES, Profile
from bagnet_lib.writeup.paper import PAPER_TABLE1, PUBLISHED_CHANNELS

REFERENCE_PROFILE = "cpu"  # what "the course", `make reproduce` and the notebooks' defaults run
TORCHVISION_CROP_SCALE = (8, 100)  # RandomResizedCrop's default, named when contrasting the profiles with it
BAGNETS = ("bagnet9", "bagnet17", "bagnet33")

NUMBER = r"(\d{1,3}(?:,\d{3})+|\d+)"
SETTINGS = {  # what a sentence states → a pattern whose groups are the stated value
    "epochs": re.compile(NUMBER + r"\s+(?:training\s+|more\s+|head\s+)?epochs?\b"),
    "training crop": re.compile(r"\b" + NUMBER + r"\s*px\s+(?:training\s+)?crops?\b|\bcrops?\s+of\s+" + NUMBER
                                + r"\s*px\b"),
    "crop scale": re.compile(r"\b(\d+)\s*%?\s*[–-]\s*(\d+)\s*%"),
    "image size": re.compile(r"\b(?:at|tested at|test size of|image size|resolution of)\s+" + NUMBER + r"\s*px\b"),
    "patch grid": re.compile(r"\b(\d+)\s*[×x]\s*(\d+)\s+(?:patch\s+)?grid\b"),
    "width": re.compile(r"\bwidth[- ](\d?\.\d+)\b"),
    "channel count": re.compile(NUMBER + r"\s+(?:feature\s+)?channels\b"),
    "learning rate": re.compile(r"\b(?:lr|learning rate)\s+(?:of\s+)?(\d*\.\d+)\b"),
    "batch size": re.compile(r"\bbatch(?:\s+size)?\s+(?:of\s+)?(\d+)\b"),
}
MEASURED = re.compile(r"(?<![\d.,])(0\.\d{3,4})(?![\d.])"  # an accuracy or a loss
                      r"|(?<![\d.,])(\d+(?:\.\d+)?)\s*(?:GFLOP/s|images/s|GFLOPs|min\b|minutes\b|×)")  # a measurement
PROFILE_NAMED = re.compile(r"`(smoke|cpu|gpu|paper)`|\b(smoke|cpu|gpu)\s+(?:profile|run)\b|\bprofile\s+`?(smoke|cpu|gpu|"
                           r"paper)\b|\bPROFILE\s*=\s*\"(smoke|cpu|gpu|paper)\"")
PAPERISH = re.compile(r"\bpaper\b|\bpaper's\b|\bpublished\b|\bImageNet\b|\boriginal\b", re.IGNORECASE)
MODEL_NAMED = re.compile(r"ResNet-50|resnet50|BagNet(?:-(?:33|17|9))?s?|bagnet(?:33|17|9)")
BLOCK = re.compile(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", re.DOTALL)
FENCE = re.compile(r"```.*?```", re.DOTALL)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*(\[<|-])|\n\s*\n|\n(?=\s*[-*|#] )|\n(?=\s*\d+\. )")


@dataclass(frozen=True)
class Finding:
    """One false statement: where, the sentence, what it states, and what is true."""

    path: str
    sentence: str
    stated: str
    truth: str

    def __str__(self) -> str:
        return f"{self.path}: “{self.sentence}” states {self.stated}; true: {self.truth}"


def _int(text: str) -> int:
    return int(text.replace(",", ""))


@lru_cache(maxsize=None)
def _grids(image_size: int) -> frozenset[tuple[int, int]]:
    return frozenset(tuple(build_model(b, 5, width=0.125).geometry.grid_size(image_size, image_size)) for b in BAGNETS)


def allowed(setting: str, profile: Profile, model: str | None) -> set:
    """The values a sentence about `profile` (and `model`, or either network when None) may state for `setting`."""
    models = [model] if model else ["resnet50", "bagnet33"]
    out: set = set()
    for m in models:
        p = profile.for_model(m)
        out |= {
            "epochs": {p.epochs} | ({p.adapt_epochs} if p.adapt_epochs else set()),
            "training crop": {p.train_crop},
            "crop scale": {(round(100 * p.crop_scale_min), round(100 * p.crop_scale_max)), TORCHVISION_CROP_SCALE},
            "image size": {p.image_size},
            "patch grid": set(_grids(p.image_size)),
            "width": {p.width},
            "channel count": {int(round(PUBLISHED_CHANNELS * p.width))},
            "learning rate": {p.lr},
            "batch size": {p.batch_size, p.eval_batch_size},
        }[setting]
    return out


def _stated(setting: str, match: re.Match):
    groups = [g for g in match.groups() if g is not None]
    if setting in ("crop scale", "patch grid"):
        return (int(groups[0]), int(groups[1]))
    if setting in ("width", "learning rate"):
        return float(groups[0])
    return _int(groups[0])


def _models_before(sentence: str, pos: int) -> str | None:
    named = [m for m in MODEL_NAMED.finditer(sentence) if m.start() < pos]
    if not named:
        return None
    return "resnet50" if named[-1].group(0).lower().startswith("resnet") else "bagnet33"


def _profiles_of(sentence: str) -> list[Profile]:
    named = {next(g for g in m.groups() if g) for m in PROFILE_NAMED.finditer(sentence)}
    if not named:
        named = {REFERENCE_PROFILE} | ({"paper"} if PAPERISH.search(sentence) else set())
    return [PROFILES[n] for n in sorted(named)]


def tuning_record(root: Path) -> dict[str, set]:
    """The settings that the recorded tuning runs used (results/tuning/*.json, written by `tune`): every "N px",
    "N×N" grid, "lo–hi %" crop scale and epoch count in their descriptions, and each image size's patch grids.
    A sentence of the tuning history may state these as well as the profile's."""
    texts, epochs = [], set()
    for path in sorted((root / "results" / "tuning").glob("*.json")):
        data = json.loads(path.read_text())
        texts.append(data.get("what", ""))
        for run in data.get("runs", []):
            texts += [str(run.get("run", "")), str(run.get("note", ""))]
            epochs.add(run.get("epochs"))
    text = " ".join(texts)
    px = {_int(m) for m in re.findall(r"(\d+)\s*px", text)}
    grids = {(int(a), int(b)) for a, b in re.findall(r"(\d+)\s*[×x]\s*(\d+)", text)}
    grids |= {g for size in px for g in _grids(size)}
    return {"epochs": {e for e in epochs if e} | {_int(m) for m in re.findall(NUMBER + r"\s+epochs?", text)},
            "training crop": px, "image size": px, "patch grid": grids,
            "crop scale": {(int(a), int(b)) for a, b in re.findall(r"(\d+)\s*%?\s*[–-]\s*(\d+)\s*%", text)}}


def check_sentence(sentence: str, known_numbers: set[str], history: dict[str, set] | None = None) -> list[tuple[str, str]]:
    """What is false in one sentence: (what it states, what is true) for each setting or number that is wrong.
    `history`: the tuning record's settings (`tuning_record`), allowed too in a sentence of the tuning history."""
    out = []
    profiles = _profiles_of(sentence)
    for setting, pattern in SETTINGS.items():
        if setting == "crop scale" and "crop" not in sentence.lower():
            continue
        for match in pattern.finditer(sentence):
            value = _stated(setting, match)
            if setting == "channel count" and value < 64:  # "3 channels" of an RGB image is no setting
                continue
            model = _models_before(sentence, match.start())
            ok: set = set((history or {}).get(setting, set()))
            for p in profiles:
                ok |= allowed(setting, p, model)
            if value not in ok:
                names = ", ".join(f"`{p.name}`" for p in profiles)
                who = f" for {model}" if model else ""
                out.append((f"{setting} {match.group(0).strip()!r}",
                            f"{setting}{who} in {names}: {' or '.join(map(str, sorted(ok, key=str)))}"))
    settings = [m.span() for pattern in SETTINGS.values() for m in pattern.finditer(sentence)]
    for match in MEASURED.finditer(sentence):
        number = match.group(1) or match.group(2)
        if number in known_numbers or any(a <= match.start() < b for a, b in settings):
            continue
        out.append((f"the number {match.group(0).strip()!r}", "no published results file or the paper's Table 1 holds "
                    "it (generate it from the run, or cite it from its file)"))
    return out


def hand_written(path: Path) -> str:
    """The text of a Markdown file or of a notebook's Markdown cells, without generated blocks and fenced code."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    return FENCE.sub("\n", BLOCK.sub("\n", text))


def sentences(text: str) -> list[str]:
    """Sentences, list items, table rows and headings of a text, each on one line."""
    parts = (re.sub(r"\s+", " ", s).strip() for s in SENTENCE_END.split(text))
    return [s for s in parts if s]


# Long lists of numbers that no prose cites: left out, so that a typed number is rarely matched by chance.
UNCITED = frozenset({"val_acc_by_epoch", "points", "drop_curve", "frontier", "blackout", "per_class", "confusion",
                     "sweep_runs_s", "recompute_s", "checked", "at"})


def _numbers_in(value, out: set[str]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        for places in range(5):
            out.add(f"{abs(value):.{places}f}")
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in UNCITED:
                _numbers_in(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers_in(v, out)


def known_numbers(root: Path) -> set[str]:
    """Every number a published results file holds (JSON under results/ but `UNCITED` lists, the seed tables, the
    before/after page `changes.md` that records the previous round) and the paper's Table 1, each as written with 0 to
    4 decimals."""
    out: set[str] = set()
    _numbers_in(PAPER_TABLE1, out)
    for path in sorted((root / "results").rglob("*.json")):
        if path.name.endswith("_metrics.json"):  # the models' headline numbers are in summary.json
            continue
        data = json.loads(path.read_text())
        _numbers_in(data, out)
        if path.name == "timings.json":  # the course's minutes: all notebooks, and the training notebooks
            _numbers_in([sum(data.values()) / 60, *(t / 60 for t in data.values())], out)
    for path in sorted((root / "results").glob("*/changes.md")):  # the previous round's numbers, as `changes` read them
        for number in re.findall(r"(?<![\w.])\d+\.\d+", path.read_text()):
            _numbers_in(float(number), out)
    for path in sorted((root / "results").glob("*/seeds.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                for v in row.values():
                    try:
                        _numbers_in(float(v), out)
                    except (TypeError, ValueError):
                        pass
    return out


def prose_files(root: Path) -> list[Path]:
    """The hand-written prose of the repository: README, docs/, the READMEs of results/ and notebooks/, notebooks."""
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "results" / "README.md",
             root / "notebooks" / "README.md", *sorted((root / "notebooks").glob("*.ipynb"))]
    return [f for f in files if f.is_file()]


HISTORY_HEADING = re.compile(r"tuned|tuning|history", re.IGNORECASE)


def sections(text: str) -> list[tuple[bool, str]]:
    """(is it tuning history, text) for each part of a text between headings: a heading that speaks of tuning
    (`HISTORY_HEADING`) opens history, until a heading of the same or a higher level that does not."""
    out, level, history = [], 0, False
    for part in re.split(r"(?m)^(#{1,6} .*)$", text):
        head = re.match(r"(#{1,6}) ", part)
        if head:
            depth = len(head.group(1))
            if HISTORY_HEADING.search(part):
                level, history = (min(level, depth) if history else depth), True
            elif history and depth <= level:
                history = False
        out.append((history, part))
    return out


def check_files(paths: list[Path], root: Path) -> list[Finding]:
    """Every false sentence of `paths` (paths named relative to `root`)."""
    numbers, record = known_numbers(root), tuning_record(root)
    found = []
    for path in paths:
        for history, part in sections(hand_written(path)):
            for sentence in sentences(part):
                for stated, truth in check_sentence(sentence, numbers, record if history else None):
                    found.append(Finding(str(path.relative_to(root)), sentence, stated, truth))
    return found


def check_repository(root: Path) -> list[Finding]:
    """Every false sentence of the repository's hand-written prose (`prose_files`)."""
    return check_files(prose_files(root), root)
