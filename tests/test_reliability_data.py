"""Reliability on bad data: one messy dataset folder, as real users bring them, through every data step.

The module fixture builds ONE folder with good images (6+ per class, so it can be split) mixed with
everything a scraped / hand-assembled / copied-from-a-Mac dataset holds: non-image files, broken and
odd images, symlink loops, a named pipe, duplicates across classes, non-ASCII names. Each test checks
one promise: the audit names every problem with its kind (also in its JSON), the split drops what
cannot be used and keeps what can be converted, every split image decodes, training runs, and
nothing in the data folder is ever modified. Datasets that cannot be split at all (an empty class
folder, one class, a class with too few images) are separate small folders at the end: each must
be a `UserError` naming the folder before any training.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bagnet_lib.data.audit import KINDS, AuditReport, audit_dataset
from bagnet_lib.data.folder import class_names, list_images
from bagnet_lib.data.images import load_rgb
from bagnet_lib.data.split import make_split, read_split, write_split
from bagnet_lib.data.tensors import base_size_for, decode_images, load_split_tensors, train_batches
from bagnet_lib.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]
N_GOOD = 6
# A hang guard, not a speed test: a walk of ~70 files takes well under a second, so one still running after
# 5 minutes (a loaded machine included, with the subprocess's imports) is stuck in a symlink loop or a pipe.
HANG_LIMIT_S = 300

# Image files that are odd but usable: they must be in the split and decode to RGB uint8.
READABLE_ODDITIES = {
    "daisy/elongated.jpg": "3000x40 px, aspect 75:1",
    "dandelion/palette.gif": "palette GIF (mode P)",
    "rose/png_named.jpg": "PNG content under a .jpg name",
    "rose/rotated.jpg": "stored 96x64 landscape, EXIF orientation 6 (shown portrait)",
    "rose/rosé photo ü.jpg": "spaces and non-ASCII characters",
    "rose/IMG 0042 (copy).JPG": "spaces, brackets, upper-case extension",
    "sunflower/alpha.png": "RGBA PNG, left half fully transparent",
    "sunflower/deep16.png": "16-bit grayscale PNG",
    "tulip/cmyk.jpg": "CMYK JPEG",
    "tulip/gray.jpg": "grayscale JPEG",
    "tulip/郁金香.jpg": "CJK file name",
    "tulip/nested/deeper/inner.jpg": "nested sub-folder inside a class",
}

# Every (path, kind) the audit must report: no more, no fewer.
EXPECTED_PROBLEMS = {
    ("LICENSE.txt", "not_image"),
    ("self", "not_image"),  # root/self -> . (a folder link that loops back to the root)
    ("daisy/scrape.py", "not_image"),
    ("daisy/__pycache__/scrape.cpython-311.pyc", "not_image"),
    ("daisy/loop", "not_image"),  # daisy/loop -> .. (loops back to the root)
    ("rose/notes.txt", "not_image"),
    ("tulip/.DS_Store", "not_image"),
    ("stray.jpg", "outside_class"),
    ("daisy/empty.jpg", "unreadable"),
    ("daisy/x.jpg", "unreadable"),  # x.jpg -> x.jpg
    ("daisy/pipe.jpg", "unreadable"),  # a named pipe: opening it would block forever
    ("rose/truncated.jpg", "unreadable"),
    ("dandelion/one_px.png", "too_small"),
    ("dandelion/twenty.jpg", "too_small"),
    ("dandelion/palette.gif", "non_rgb"),
    ("sunflower/alpha.png", "non_rgb"),
    ("sunflower/deep16.png", "non_rgb"),
    ("tulip/cmyk.jpg", "non_rgb"),
    ("tulip/gray.jpg", "non_rgb"),
    ("daisy/shared.jpg", "duplicate"),
    ("sunflower/shared.jpg", "duplicate"),
    ("daisy/shared.jpg", "label_conflict"),
    ("sunflower/shared.jpg", "label_conflict"),
}
EXCLUDED = {"daisy/empty.jpg", "daisy/x.jpg", "daisy/pipe.jpg", "rose/truncated.jpg", "dandelion/one_px.png",
            "dandelion/twenty.jpg", "daisy/shared.jpg", "sunflower/shared.jpg"}
GOOD = {f"{c}/good_{i}.jpg" for c in CLASSES for i in range(N_GOOD)}
USABLE = GOOD | set(READABLE_ODDITIES)


# ----------------------------------------------------------------------------- building the folder
def _photo(seed: int, w: int = 64, h: int | None = None) -> Image.Image:
    """A smooth random RGB picture (distinct seeds are never perceptual duplicates)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize((w, h or w), Image.Resampling.BICUBIC)


def _build_messy(root: Path) -> None:
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(N_GOOD):
            _photo(1000 + 10 * c + i).save(root / cls / f"good_{i}.jpg", quality=90)
    # not images
    (root / "LICENSE.txt").write_text("CC-BY 2.0\n")
    (root / "daisy" / "scrape.py").write_text("print('scraper')\n")
    (root / "daisy" / "__pycache__").mkdir()
    (root / "daisy" / "__pycache__" / "scrape.cpython-311.pyc").write_bytes(b"\xa7\r\r\n" + bytes(12))
    (root / "rose" / "notes.txt").write_text("from flickr\n")
    (root / "tulip" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(20))
    _photo(2).save(root / "stray.jpg")
    # unreadable
    (root / "daisy" / "empty.jpg").write_bytes(b"")
    good = (root / "rose" / "good_0.jpg").read_bytes()
    (root / "rose" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    os.mkfifo(root / "daisy" / "pipe.jpg")
    # symlink loops
    os.symlink("..", root / "daisy" / "loop")
    os.symlink("x.jpg", root / "daisy" / "x.jpg")
    os.symlink(".", root / "self")
    # too small
    _photo(3, 1).save(root / "dandelion" / "one_px.png")
    _photo(4, 20).save(root / "dandelion" / "twenty.jpg")
    # odd but readable
    _photo(5, 3000, 40).save(root / "daisy" / "elongated.jpg")
    _photo(6).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "dandelion" / "palette.gif")
    _photo(7).save(root / "rose" / "png_named.jpg", format="PNG")
    rotated = _photo(8, 96, 64)
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90°: stored landscape, shown portrait
    rotated.save(root / "rose" / "rotated.jpg", exif=exif)
    _photo(9).save(root / "rose" / "rosé photo ü.jpg")
    _photo(10).save(root / "rose" / "IMG 0042 (copy).JPG")
    rgba = _photo(11).convert("RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(root / "sunflower" / "alpha.png")
    Image.fromarray(np.asarray(_photo(12).convert("L"), dtype=np.uint16) * 257).save(root / "sunflower" / "deep16.png")
    _photo(13).convert("CMYK").save(root / "tulip" / "cmyk.jpg", quality=90)
    _photo(14).convert("L").save(root / "tulip" / "gray.jpg", quality=90)
    _photo(15).save(root / "tulip" / "郁金香.jpg")
    (root / "tulip" / "nested" / "deeper").mkdir(parents=True)
    _photo(16).save(root / "tulip" / "nested" / "deeper" / "inner.jpg")
    # the same file under two classes
    _photo(17).save(root / "daisy" / "shared.jpg")
    (root / "sunflower" / "shared.jpg").write_bytes((root / "daisy" / "shared.jpg").read_bytes())


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (symlinks not followed, named pipes never opened): its type, mode,
    size, mtime, link target and the SHA-256 of regular files."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = os.lstat(full)
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
            digest = (hashlib.sha256(full.read_bytes()).hexdigest()
                      if stat.S_ISREG(st.st_mode) else None)
            out[full.relative_to(root).as_posix()] = (
                stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                st.st_size if not stat.S_ISDIR(st.st_mode) else None, st.st_mtime_ns, link, digest)
    st = os.lstat(root)
    out["."] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), None, st.st_mtime_ns, None, None)
    return dict(sorted(out.items()))


def _within(seconds: float, fn, *args, **kwargs):
    """fn(*args, **kwargs), failing the test (instead of hanging it) if it takes longer than `seconds`."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{getattr(fn, '__name__', fn)} did not finish in {seconds} s (a symlink loop or a pipe?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy_reliability") / "flowers"
    root.mkdir()
    _build_messy(root)
    return root


@pytest.fixture(scope="module")
def pristine(messy) -> dict[str, tuple]:
    """The folder's snapshot before any test ran anything on it."""
    return _snapshot(messy)


@pytest.fixture(scope="module")
def report(messy, pristine) -> AuditReport:
    return _within(HANG_LIMIT_S, audit_dataset, messy, progress=False)


@pytest.fixture(scope="module")
def split(messy, report):
    return _within(HANG_LIMIT_S, make_split, messy, seed=0, audit=report)


# ----------------------------------------------------------------------------- audit
def test_the_walk_survives_symlink_loops_and_pipes(messy, pristine):
    classes = _within(HANG_LIMIT_S, class_names, messy)
    assert classes == CLASSES  # `self -> .` is not a sixth class (it would hold the whole dataset again)
    listed = {s.path: s.label for s in _within(HANG_LIMIT_S, list_images, messy)}
    # what the loader sees: image-named regular files in class folders, nested ones included
    assert set(listed) == USABLE | EXCLUDED - {"daisy/x.jpg", "daisy/pipe.jpg"}
    assert not any(p.startswith("daisy/loop/") for p in listed)
    assert listed["tulip/nested/deeper/inner.jpg"] == "tulip"


def test_audit_lists_every_problem_once_with_its_kind(report):
    found = [(p.path, p.kind) for p in report.problems]
    assert len(found) == len(set(found)), "one entry per file and kind"
    assert set(found) == EXPECTED_PROBLEMS
    assert all(p.kind in KINDS for p in report.problems)
    assert report.classes == CLASSES
    # readable image files per class (too small and duplicates counted, unreadable ones not)
    assert report.class_counts == {"daisy": N_GOOD + 2, "dandelion": N_GOOD + 3, "rose": N_GOOD + 4,
                                   "sunflower": N_GOOD + 3, "tulip": N_GOOD + 4}
    assert report.duplicate_groups == [["daisy/shared.jpg", "sunflower/shared.jpg"]]
    assert report.conflict_groups == [["daisy/shared.jpg", "sunflower/shared.jpg"]]
    assert report.excluded_paths() == EXCLUDED


def test_audit_details_say_what_is_wrong(report):
    detail = {(p.path, p.kind): p.detail for p in report.problems}
    assert "loop" in detail[("daisy/loop", "not_image")] and "not followed" in detail[("daisy/loop", "not_image")]
    assert "loop" in detail[("self", "not_image")]
    assert "loop" in detail[("daisy/x.jpg", "unreadable")] and "x.jpg -> x.jpg" in detail[("daisy/x.jpg", "unreadable")]
    assert "pipe" in detail[("daisy/pipe.jpg", "unreadable")]
    assert "0 bytes" in detail[("daisy/empty.jpg", "unreadable")]
    assert "truncated" in detail[("rose/truncated.jpg", "unreadable")].lower()
    assert "1x1" in detail[("dandelion/one_px.png", "too_small")]
    assert "20x20" in detail[("dandelion/twenty.jpg", "too_small")]
    assert "hidden" in detail[("tulip/.DS_Store", "not_image")]
    assert "'.pyc'" in detail[("daisy/__pycache__/scrape.cpython-311.pyc", "not_image")]
    modes = {"dandelion/palette.gif": "'P'", "sunflower/alpha.png": "'RGBA'", "sunflower/deep16.png": "'I;16'",
             "tulip/cmyk.jpg": "'CMYK'", "tulip/gray.jpg": "'L'"}
    for path, mode in modes.items():
        assert mode in detail[(path, "non_rgb")] and "converted" in detail[(path, "non_rgb")]
    assert "daisy, sunflower" in detail[("daisy/shared.jpg", "label_conflict")]
    text = report.format_text()
    for path, kind in EXPECTED_PROBLEMS:
        assert path in text and f"\n{kind} (" in text


def test_the_json_report_has_every_problem(report, messy):
    js = json.loads(json.dumps(report.to_json(), ensure_ascii=False))
    assert {(p["path"], p["kind"]) for p in js["problems"]} == EXPECTED_PROBLEMS
    assert js["summary"] == {k: sum(1 for _, kind in EXPECTED_PROBLEMS if kind == k) for k in KINDS}
    back = AuditReport.from_json(json.loads(json.dumps(report.to_json())))  # ASCII-escaped names survive too
    assert back.to_json() == report.to_json() and back.excluded_paths() == EXCLUDED
    # and from the command line, as a user gets it (stdout carries the JSON alone)
    env = {k: v for k, v in os.environ.items() if k not in ("BAGNET_DATA", "BAGNET_MANIFEST")}
    proc = subprocess.run([sys.executable, "-m", "bagnet_lib", "data", "audit", "--data-dir", str(messy), "--json"],
                          cwd=ROOT, env={**env, "BAGNET_NO_DOWNLOAD": "1"}, capture_output=True, text=True,
                          encoding="utf-8", timeout=HANG_LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    cli_js = json.loads(proc.stdout)
    assert {(p["path"], p["kind"]) for p in cli_js["problems"]} == EXPECTED_PROBLEMS


# ----------------------------------------------------------------------------- split
def test_split_excludes_unusable_files_and_keeps_convertible_ones(split, messy, tmp_path):
    assert set(split["path"]) == USABLE  # every good and odd-but-readable file, nothing else
    assert not EXCLUDED & set(split["path"])
    assert sorted(split["label"].unique()) == class_names(messy)  # every model output gets images
    assert split.groupby("label")["split"].nunique().to_dict() == {c: 3 for c in CLASSES}
    for path in READABLE_ODDITIES:
        assert split.set_index("path").loc[path, "label"] == path.split("/", 1)[0]
    # file names with spaces, brackets and non-ASCII characters survive the CSV round trip
    back = read_split(write_split(split, tmp_path / "split.csv"))
    assert list(back["path"]) == list(split["path"])
    assert all((messy / p).is_file() for p in back["path"])


def test_odd_images_are_converted_on_load(messy):
    for rel in READABLE_ODDITIES:
        img = load_rgb(messy / rel)
        assert img.mode == "RGB", rel
    base = base_size_for(48)  # 55
    rels = list(READABLE_ODDITIES)
    decoded = dict(zip(rels, decode_images(messy, rels, base, None, progress=False)))
    for rel, t in decoded.items():
        assert t.dtype == torch.uint8 and t.ndim == 3 and t.shape[0] == 3 and min(t.shape[1:]) == base, rel
    # EXIF orientation applied: stored 96 wide x 64 high, shown (and decoded) portrait
    _, h, w = decoded["rose/rotated.jpg"].shape
    assert h > w and w == base and abs(h / w - 1.5) < 0.05
    # the 75:1 strip keeps its aspect ratio
    _, h, w = decoded["daisy/elongated.jpg"].shape
    assert h == base and abs(w / h - 75) < 1
    # a PNG named .jpg decodes losslessly, as the PNG it is
    assert np.array_equal(np.asarray(load_rgb(messy / "rose/png_named.jpg")), np.asarray(_photo(7)))
    # 16-bit: scaled to 8 bits, not clipped to white nor truncated to black
    deep = np.asarray(load_rgb(messy / "sunflower/deep16.png"))
    assert deep.dtype == np.uint8 and np.array_equal(deep[..., 0], np.asarray(_photo(12).convert("L")))
    # grayscale: three equal channels; CMYK: plausible colours, not all one value
    gray = np.asarray(load_rgb(messy / "tulip/gray.jpg"))
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    cmyk = np.asarray(load_rgb(messy / "tulip/cmyk.jpg")).astype(int)
    assert np.abs(cmyk - np.asarray(_photo(13)).astype(int)).mean() < 20
    # alpha: transparent pixels are black (composited), opaque ones keep their colour
    rgba = np.asarray(load_rgb(messy / "sunflower/alpha.png"))
    assert not rgba[:, :32].any() and np.array_equal(rgba[:, 32:], np.asarray(_photo(11))[:, 32:])


def test_every_split_image_decodes_and_a_training_epoch_runs(split, messy):
    for name in ("train", "val", "test"):
        data = load_split_tensors(messy, split, name, CLASSES, 48, progress=False)
        assert len(data) == int((split["split"] == name).sum())
        assert all(t.dtype == torch.uint8 and t.shape[0] == 3 and min(t.shape[1:]) == base_size_for(48)
                   for t in data.images)
    train = load_split_tensors(messy, split, "train", CLASSES, 48, progress=False)
    seen = 0
    for x, y in train_batches(train, 48, batch_size=8, seed=0, epoch=0, drop_last=False):
        assert x.shape == (len(y), 3, 48, 48) and x.dtype == torch.uint8
        assert ((0 <= y) & (y < len(CLASSES))).all()
        seen += len(y)
    assert seen == len(train)


# ----------------------------------------------------------------------------- the pipeline end to end
def test_prepare_run_and_train_step_on_the_messy_folder(messy, tmp_path, monkeypatch):
    from bagnet_lib.course import pipeline

    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    monkeypatch.delenv("BAGNET_DATA", raising=False)
    run = pipeline.prepare_run(tmp_path / "run", "smoke", data_dir=messy, progress=False)
    assert run.classes == CLASSES and not run.synthetic
    assert set(run.split["path"]) <= USABLE and not EXCLUDED & set(run.split["path"])
    assert set(run.split["label"]) == set(CLASSES)
    audit = run.audit()  # RUN_DIR/audit.json
    assert {(p.path, p.kind) for p in audit.problems} == EXPECTED_PROBLEMS
    # train_step takes about 5 s on the 2-core reference machine: training never fails mid-epoch
    metrics = pipeline.train_step(run, "bagnet33", progress=False)
    assert metrics["best_epoch"] == 1 and 0.0 <= metrics["test"]["acc"] <= 1.0
    assert math.isfinite(metrics["best_val_acc"])
    assert (run.run_dir / "checkpoints" / "bagnet33_best.pt").is_file()


def test_the_data_folder_is_never_modified(messy, pristine, tmp_path, monkeypatch):
    """Runs every step again (the earlier tests ran them too), then compares with the snapshot taken
    right after the folder was built: same entries, types, modes, sizes, mtimes, link targets, bytes."""
    from bagnet_lib.course import pipeline

    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    monkeypatch.delenv("BAGNET_DATA", raising=False)
    report = audit_dataset(messy, progress=False, workers=1)
    df = make_split(messy, seed=1, audit=report)
    for name in ("train", "val", "test"):
        load_split_tensors(messy, df, name, CLASSES, 48, cache_dir=tmp_path / "cache", progress=False)
    run = pipeline.prepare_run(tmp_path / "run", "smoke", data_dir=messy, progress=False)
    run.tensors("train", progress=False)
    after = _snapshot(messy)
    assert list(after) == list(pristine), "entries were added, removed or renamed in the data folder"
    changed = [p for p in pristine if after[p] != pristine[p]]
    assert not changed, f"modified in the data folder: {changed}"
    assert os.readlink(messy / "daisy" / "loop") == ".." and os.readlink(messy / "daisy" / "x.jpg") == "x.jpg"


# ----------------------------------------------------------------------------- datasets that cannot be split
def _small_dataset(root: Path, layout: dict[str, int], seed: int = 0) -> Path:
    """`layout`: class -> number of good images (0: an empty folder)."""
    for c, (cls, n) in enumerate(layout.items()):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            _photo(5000 + 100 * c + i + seed).save(root / cls / f"{i}.jpg")
    return root


def _refused(root: Path, tmp_path: Path, monkeypatch) -> str:
    """The UserError of make_split and of prepare_run (which must fail before training: no split
    written, no checkpoint); returns the message after checking it is one paragraph."""
    from bagnet_lib.course import pipeline

    with pytest.raises(UserError) as err:
        make_split(root, seed=0)
    msg = str(err.value)
    assert "\n" not in msg
    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    monkeypatch.delenv("BAGNET_DATA", raising=False)
    run_dir = tmp_path / "run"
    with pytest.raises(UserError) as err2:
        pipeline.prepare_run(run_dir, "smoke", data_dir=root, progress=False)
    assert str(err2.value) == msg
    assert not (run_dir / "split.csv").exists() and not (run_dir / "checkpoints").exists()
    return msg


def test_an_empty_class_folder_is_refused_by_name(tmp_path, monkeypatch):
    root = _small_dataset(tmp_path / "data", {"daisy": 6, "rose": 6, "tulip": 0})
    assert class_names(root) == ["daisy", "rose", "tulip"]  # it would be a third model output
    msg = _refused(root, tmp_path, monkeypatch)
    assert str((root / "tulip").resolve()) in msg and "0 usable images" in msg
    assert "daisy" not in msg and "rose" not in msg.replace("tulip", "")
    assert "add images" in msg and "remove" in msg


def test_a_class_folder_with_only_unusable_files_is_refused_by_name(tmp_path, monkeypatch):
    root = _small_dataset(tmp_path / "data", {"daisy": 6, "rose": 6, "tulip": 0})
    (root / "tulip" / ".DS_Store").write_bytes(b"Bud1")
    (root / "tulip" / "readme.txt").write_text("tulips\n")
    (root / "tulip" / "empty.jpg").write_bytes(b"")
    _photo(1, 16).save(root / "tulip" / "thumb.jpg")
    os.symlink("..", root / "tulip" / "up")
    msg = _refused(root, tmp_path, monkeypatch)
    assert str((root / "tulip").resolve()) in msg and "0 usable images" in msg
    assert "data audit" in msg and "add images" in msg and "remove" in msg


def test_a_class_with_too_few_images_is_refused_by_name(tmp_path, monkeypatch):
    root = _small_dataset(tmp_path / "data", {"daisy": 6, "rose": 1, "tulip": 6})
    msg = _refused(root, tmp_path, monkeypatch)
    assert str((root / "rose").resolve()) in msg and "1 usable image)" in msg
    assert "fewer than 3" in msg and "add images" in msg and "remove" in msg
    assert str((root / "daisy").resolve()) not in msg


def test_a_single_class_dataset_is_refused(tmp_path, monkeypatch):
    root = _small_dataset(tmp_path / "data", {"daisy": 6})
    msg = _refused(root, tmp_path, monkeypatch)
    assert str((root / "daisy").resolve()) in msg and "at least two class" in msg
    assert "Add a sub-folder" in msg


def test_a_manifest_split_also_refuses_an_empty_class_folder(tmp_path):
    from bagnet_lib.data.split import read_manifest

    root = _small_dataset(tmp_path / "data", {"daisy": 3, "rose": 3, "tulip": 0})
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,split\n" + "".join(f"{c}/{i}.jpg,{s}\n" for c in ("daisy", "rose")
                                                 for i, s in enumerate(("train", "val", "test"))))
    with pytest.raises(UserError) as err:
        read_manifest(root, manifest)
    assert str((root / "tulip").resolve()) in str(err.value) and "m.csv" in str(err.value)
    (root / "tulip").rmdir()
    assert len(read_manifest(root, manifest)) == 6


def test_the_cli_split_refuses_an_empty_class_in_one_paragraph(tmp_path):
    root = _small_dataset(tmp_path / "data", {"daisy": 6, "rose": 6, "tulip": 0})
    env = {k: v for k, v in os.environ.items() if k not in ("BAGNET_DATA", "BAGNET_MANIFEST")}
    proc = subprocess.run([sys.executable, "-m", "bagnet_lib", "data", "split", "--data-dir", str(root),
                           "--out", str(tmp_path / "split.csv")], cwd=ROOT, env={**env, "BAGNET_NO_DOWNLOAD": "1"},
                          capture_output=True, text=True, timeout=HANG_LIMIT_S)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "tulip" in proc.stderr
    assert not (tmp_path / "split.csv").exists()
