"""`audit_dataset` on a hand-made folder with one of every problem, and on the shared flowers."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bagnet_lib.data.audit import KINDS, AuditReport, Problem, audit_dataset, perceptual_hash, split_leakage
from bagnet_lib.data.folder import list_images
from bagnet_lib.errors import UserError
from bagnet_lib.io import sha256_file


def _photo(seed: int, size: int = 96) -> Image.Image:
    """A smooth random RGB picture: low-frequency structure, so JPEG re-encoding barely changes it."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    return small.resize((size, size), Image.Resampling.BICUBIC)


def _jpeg(path: Path, im: Image.Image, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, "JPEG", quality=quality)
    return path


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("messy")
    for c, cls in enumerate(("daisy", "dandelion", "rose", "tulip")):
        for i in range(3):
            _jpeg(root / cls / f"good_{i}.jpg", _photo(100 * c + i))
    _jpeg(root / "daisy" / "nested" / "deep.jpg", _photo(7))  # nested folders count
    # not images
    (root / "dandelion" / "flickr.py").write_text("print('scraper')\n")
    (root / "dandelion" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "LICENSE.txt").write_text("CC-BY 2.0\n")
    # an image outside any class
    _jpeg(root / "stray.jpg", _photo(8))
    # unreadable
    good = (root / "rose" / "good_0.jpg").read_bytes()
    (root / "rose" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "rose" / "empty.jpg").write_bytes(b"")
    (root / "rose" / "garbage.png").write_bytes(b"this is not a png at all" * 10)
    # non-RGB storage
    _photo(11).convert("CMYK").save(root / "daisy" / "cmyk.jpg", "JPEG", quality=90)
    _photo(12).convert("L").save(root / "daisy" / "gray.png")
    _photo(13).convert("RGBA").save(root / "tulip" / "alpha.png")
    # too small (and 33 px exactly is fine)
    _jpeg(root / "tulip" / "tiny.jpg", _photo(14, size=20))
    _jpeg(root / "tulip" / "just_big_enough.jpg", _photo(15, size=33).resize((33, 60)))
    # byte-identical pair in one class
    _jpeg(root / "daisy" / "dup_a.jpg", _photo(16))
    (root / "daisy" / "dup_b.jpg").write_bytes((root / "daisy" / "dup_a.jpg").read_bytes())
    # the same file in two classes
    _jpeg(root / "rose" / "shared.jpg", _photo(17))
    (root / "tulip" / "shared.jpg").write_bytes((root / "rose" / "shared.jpg").read_bytes())
    # a re-encoded (different JPEG quality, and resized) near-duplicate
    _jpeg(root / "dandelion" / "orig.jpg", _photo(18, size=128), quality=95)
    _jpeg(root / "dandelion" / "reencoded.jpg", _photo(18, size=128).resize((100, 100)), quality=40)
    # flat images in different classes: identical (all-zero) hashes, but not duplicates
    Image.new("RGB", (64, 64), (250, 250, 250)).save(root / "daisy" / "flat_white.png")
    Image.new("RGB", (64, 64), (40, 40, 40)).save(root / "dandelion" / "flat_dark.png")
    return root


@pytest.fixture(scope="module")
def report(messy) -> AuditReport:
    return audit_dataset(messy, progress=False)


def _kind_paths(report: AuditReport, kind: str) -> list[str]:
    return sorted(p.path for p in report.problems if p.kind == kind)


def test_classes_and_counts(report, messy):
    assert report.classes == ["daisy", "dandelion", "rose", "tulip"]
    # readable image files per class (too small and duplicates included, unreadable not)
    assert report.class_counts == {"daisy": 3 + 1 + 2 + 2 + 1, "dandelion": 3 + 2 + 1, "rose": 3 + 1,
                                   "tulip": 3 + 1 + 2 + 1}
    assert report.n_images == sum(report.class_counts.values())
    assert report.root == str(messy)


def test_not_image(report):
    assert _kind_paths(report, "not_image") == ["LICENSE.txt", "dandelion/.DS_Store", "dandelion/flickr.py"]
    detail = {p.path: p.detail for p in report.by_kind("not_image")}
    assert "root" in detail["LICENSE.txt"] and "hidden" in detail["dandelion/.DS_Store"]
    assert "'.py'" in detail["dandelion/flickr.py"]


def test_outside_class(report):
    assert _kind_paths(report, "outside_class") == ["stray.jpg"]


def test_unreadable(report):
    assert _kind_paths(report, "unreadable") == ["rose/empty.jpg", "rose/garbage.png", "rose/truncated.jpg"]
    detail = {p.path: p.detail for p in report.by_kind("unreadable")}
    assert "0 bytes" in detail["rose/empty.jpg"]
    assert "truncated" in detail["rose/truncated.jpg"].lower()


def test_too_small(report):
    assert _kind_paths(report, "too_small") == ["tulip/tiny.jpg"]
    assert "20x20" in report.by_kind("too_small")[0].detail


def test_non_rgb(report):
    assert _kind_paths(report, "non_rgb") == ["daisy/cmyk.jpg", "daisy/gray.png", "tulip/alpha.png"]
    detail = {p.path: p.detail for p in report.by_kind("non_rgb")}
    assert "'CMYK'" in detail["daisy/cmyk.jpg"] and "'L'" in detail["daisy/gray.png"]
    assert "'RGBA'" in detail["tulip/alpha.png"]


def test_duplicates_and_label_conflicts(report):
    assert report.duplicate_groups == [
        ["daisy/dup_a.jpg", "daisy/dup_b.jpg"],
        ["dandelion/orig.jpg", "dandelion/reencoded.jpg"],
        ["rose/shared.jpg", "tulip/shared.jpg"],
    ]
    assert report.conflict_groups == [["rose/shared.jpg", "tulip/shared.jpg"]]
    dups = {p.path: p for p in report.by_kind("duplicate")}
    assert sorted(dups) == sorted(p for g in report.duplicate_groups for p in g)
    assert dups["daisy/dup_a.jpg"].group == 0 and "daisy/dup_b.jpg (identical bytes)" in dups["daisy/dup_a.jpg"].detail
    assert dups["dandelion/orig.jpg"].group == 1 and "near-identical" in dups["dandelion/orig.jpg"].detail
    assert "dandelion/reencoded.jpg" in dups["dandelion/orig.jpg"].detail
    conflicts = report.by_kind("label_conflict")
    assert sorted(p.path for p in conflicts) == ["rose/shared.jpg", "tulip/shared.jpg"]
    assert all(p.group == 2 and "rose, tulip" in p.detail for p in conflicts)
    # flat images all hash alike, but are not duplicates of each other
    assert not any("flat_" in p for g in report.duplicate_groups for p in g)


def test_one_entry_per_file_and_kind(report):
    keys = [(p.path, p.kind) for p in report.problems]
    assert len(keys) == len(set(keys))
    assert all(p.kind in KINDS for p in report.problems)
    assert all("\\" not in p.path and not p.path.startswith("/") for p in report.problems)


def test_excluded_paths(report):
    base = {"rose/empty.jpg", "rose/garbage.png", "rose/truncated.jpg", "tulip/tiny.jpg"}
    assert report.excluded_paths() == base | {"rose/shared.jpg", "tulip/shared.jpg"}
    assert report.excluded_paths(keep_conflicts=True) == base
    loadable = {s.path for s in list_images(report.root)}
    assert report.excluded_paths() <= loadable  # only ever things the loader would otherwise load


def test_to_json(report):
    js = report.to_json()
    assert list(js) == ["root", "classes", "class_counts", "n_images", "problems", "duplicate_groups",
                        "label_conflict_groups", "summary"]
    json.dumps(js)  # plain JSON types only
    assert js["n_images"] == report.n_images
    assert js["label_conflict_groups"] == [["rose/shared.jpg", "tulip/shared.jpg"]]
    assert js["summary"] == {"not_image": 3, "outside_class": 1, "unreadable": 3, "too_small": 1, "non_rgb": 3,
                             "duplicate": 6, "label_conflict": 2}
    for entry in js["problems"]:
        assert set(entry) in ({"path", "kind", "detail"}, {"path", "kind", "detail", "group"})
        assert ("group" in entry) == (entry["kind"] in ("duplicate", "label_conflict"))


def test_format_text(report):
    text = report.format_text()
    for cls, n in report.class_counts.items():
        assert any(line.split() == [cls, str(n)] for line in text.splitlines())
    for kind in ("not_image", "unreadable", "too_small", "non_rgb", "duplicate", "label_conflict"):
        assert f"\n{kind} (" in text
    assert "rose/truncated.jpg" in text and "tulip/shared.jpg" in text
    short = report.format_text(max_per_kind=1)
    assert "... and 5 more" in short  # 6 duplicate entries


def test_same_result_with_one_or_many_threads(messy, report):
    again = audit_dataset(messy, progress=False, workers=1)
    assert again.to_json() == report.to_json()


def test_bytes_only_mode_misses_the_reencoded_copy(messy):
    r = audit_dataset(messy, progress=False, near_threshold=-1)
    assert ["dandelion/orig.jpg", "dandelion/reencoded.jpg"] not in r.duplicate_groups
    assert len(r.duplicate_groups) == 2


def test_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        audit_dataset(tmp_path / "nope", progress=False)


def test_helpers(messy):
    path = messy / "daisy" / "good_0.jpg"
    import hashlib

    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    bits, std = perceptual_hash(_photo(1))
    assert bits.shape == (512,) and bits.dtype == bool and std > 4
    flat_bits, flat_std = perceptual_hash(Image.new("RGB", (50, 50), (9, 9, 9)))
    assert flat_std < 4 and not flat_bits.any()


def test_split_leakage():
    report = AuditReport(
        root="x", classes=["a", "b"], class_counts={"a": 5, "b": 2},
        problems=[Problem("a/1.jpg", "duplicate", "d", 0)],
        duplicate_groups=[["a/1.jpg", "a/2.jpg"], ["a/3.jpg", "b/3.jpg"], ["a/4.jpg", "a/5.jpg", "b/9.jpg"]],
        conflict_groups=[["a/3.jpg", "b/3.jpg"], ["a/4.jpg", "a/5.jpg", "b/9.jpg"]],
    )
    split = pd.DataFrame({
        "path": ["a/1.jpg", "a/2.jpg", "./a/3.jpg", "b/3.jpg", "a/4.jpg", "a/5.jpg", "a/6.jpg"],
        "split": ["train", "train", "train", "test", "train", "val", "test"],
    })
    out = split_leakage(split, report)
    assert list(out.columns) == ["group", "paths", "splits", "classes"]
    assert out["group"].tolist() == [1, 2]
    assert out.loc[0, "paths"] == ["a/3.jpg", "b/3.jpg"] and out.loc[0, "splits"] == ["test", "train"]
    assert out.loc[0, "classes"] == ["a", "b"]
    assert out.loc[1, "paths"] == ["a/4.jpg", "a/5.jpg"]  # b/9.jpg is in no split
    assert out.loc[1, "splits"] == ["train", "val"] and out.loc[1, "classes"] == ["a"]

    none = split_leakage(split[split["split"] == "train"], report)
    assert none.empty and list(none.columns) == ["group", "paths", "splits", "classes"]
    with pytest.raises(UserError, match="split"):
        split_leakage(pd.DataFrame({"file": ["a/1.jpg"]}), report)


def _shared_root() -> Path:
    env = os.environ.get("BAGNET_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "../shared/data/flowers"


@pytest.mark.shared_data
@pytest.mark.slow
def test_shared_flowers():
    root = _shared_root()
    if not root.is_dir():
        pytest.skip(f"shared flowers dataset not found at {root.resolve()} (set BAGNET_DATA to it)")
    n_files = len(list_images(root))
    if n_files != 4242:
        pytest.skip(f"{root.resolve()} holds {n_files} image files, not the paper's 4,242-image version")
    report = audit_dataset(root, progress=False)
    assert report.n_images == 4242
    assert report.class_counts == {"daisy": 769, "dandelion": 990, "rose": 783, "sunflower": 734, "tulip": 966}
    assert len(report.conflict_groups) == 8
    assert all(len(g) == 2 for g in report.conflict_groups)
    byte_groups = [g for g in report.duplicate_groups if len({sha256_file(root / p) for p in g}) == 1]
    assert len(byte_groups) == 10  # the README's 10 byte-identical groups ...
    assert len(report.duplicate_groups) > 10  # ... plus near-duplicates
    assert not report.by_kind("unreadable") and not report.by_kind("too_small")
    assert len(report.excluded_paths()) == 16


def test_json_round_trip(report):
    back = AuditReport.from_json(json.loads(json.dumps(report.to_json())))
    assert back.to_json() == report.to_json()
    assert back.excluded_paths() == report.excluded_paths()
