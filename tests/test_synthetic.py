"""The embedded synthetic flowers dataset: layout, determinism, idempotence, and a learnable-but-not-trivial task."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bagnet_lib.data.folder import FLOWER_CLASSES, class_names
from bagnet_lib.data.synthetic import MARKER_NAME, generate_synthetic_dataset, render_image


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpg"))


def _bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in _files(root)}


# ---------------------------------------------------------------------------------------------- layout

@pytest.mark.parametrize("size", [64, 96])
def test_layout_classes_counts_and_decoding(tmp_path: Path, size: int) -> None:
    root = generate_synthetic_dataset(tmp_path / "syn", n_per_class=3, image_size=size, seed=0, progress=False)
    assert root == tmp_path / "syn"
    assert class_names(root) == sorted(FLOWER_CLASSES)
    for c in FLOWER_CLASSES:
        names = sorted(p.name for p in (root / c).iterdir())
        assert names == [f"{c}_{i:05d}.jpg" for i in range(3)]
        for name in names:
            with Image.open(root / c / name) as im:
                assert im.format == "JPEG"
                assert im.mode == "RGB"
                assert im.size == (size, size)
    marker = json.loads((root / MARKER_NAME).read_text())
    assert marker["n_files"] == 15 and marker["image_size"] == size and marker["seed"] == 0


@pytest.mark.parametrize("size", [32, 128, 224])
def test_render_image_any_size_is_rgb_and_not_flat(size: int) -> None:
    for ci, c in enumerate(FLOWER_CLASSES):
        im = render_image(c, np.random.default_rng([0, ci, 0]), size)
        assert im.mode == "RGB" and im.size == (size, size)
        assert np.asarray(im).std() > 10  # a scene, not a blank canvas


def test_render_image_rejects_unknown_class() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        render_image("orchid", np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = _bytes(generate_synthetic_dataset(tmp_path / "a", n_per_class=4, image_size=64, seed=3, progress=False))
    b = _bytes(generate_synthetic_dataset(tmp_path / "b", n_per_class=4, image_size=64, seed=3, progress=False))
    c = _bytes(generate_synthetic_dataset(tmp_path / "c", n_per_class=4, image_size=64, seed=4, progress=False))
    assert len(a) == 20 and a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)  # every single image changes with the seed


def test_images_within_a_dataset_are_all_different(tmp_path: Path) -> None:
    files = _bytes(generate_synthetic_dataset(tmp_path, n_per_class=4, image_size=64, seed=0, progress=False))
    assert len(set(files.values())) == len(files)


def test_image_depends_only_on_seed_class_index(tmp_path: Path) -> None:
    small = _bytes(generate_synthetic_dataset(tmp_path / "n3", n_per_class=3, image_size=64, seed=1, progress=False))
    large = _bytes(generate_synthetic_dataset(tmp_path / "n5", n_per_class=5, image_size=64, seed=1, progress=False))
    assert len(small) == 15 and len(large) == 25
    assert all(large[k] == v for k, v in small.items())


# ---------------------------------------------------------------------------------------------- idempotence

def test_second_call_with_same_params_writes_nothing(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path, n_per_class=2, image_size=64, seed=0, progress=False)
    paths = _files(root) + [root / MARKER_NAME]
    before = {p: p.stat().st_mtime_ns for p in paths}
    assert generate_synthetic_dataset(tmp_path, n_per_class=2, image_size=64, seed=0, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in paths} == before
    assert set(_files(root)) | {root / MARKER_NAME} == set(before)


def test_changed_params_or_missing_file_regenerate(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path, n_per_class=4, image_size=64, seed=0, progress=False)
    (root / "rose" / "rose_00002.jpg").unlink()
    generate_synthetic_dataset(tmp_path, n_per_class=4, image_size=64, seed=0, progress=False)
    assert (root / "rose" / "rose_00002.jpg").is_file()

    # a different size rewrites every file; a smaller n removes our own stale files, nothing else
    keep = root / "daisy" / "notes.txt"
    keep.write_text("mine")
    (root / "README").write_text("also mine")
    generate_synthetic_dataset(tmp_path, n_per_class=2, image_size=48, seed=0, progress=False)
    for c in FLOWER_CLASSES:
        names = sorted(p.name for p in (root / c).glob("*.jpg"))
        assert names == [f"{c}_00000.jpg", f"{c}_00001.jpg"]
        for n in names:
            with Image.open(root / c / n) as im:
                assert im.size == (48, 48)
    assert keep.read_text() == "mine" and (root / "README").read_text() == "also mine"
    assert json.loads((root / MARKER_NAME).read_text())["n_per_class"] == 2


def test_stale_marker_with_other_params_is_not_trusted(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path / "reused", n_per_class=2, image_size=64, seed=0, progress=False)
    generate_synthetic_dataset(root, n_per_class=2, image_size=64, seed=9, progress=False)
    assert json.loads((root / MARKER_NAME).read_text())["seed"] == 9
    fresh = _bytes(generate_synthetic_dataset(tmp_path / "fresh", n_per_class=2, image_size=64, seed=9, progress=False))
    assert _bytes(root) == fresh


# ---------------------------------------------------------------------------------------------- the task

def _local_features(img: np.ndarray) -> np.ndarray:
    """A bag of local features: joint colour histogram, gradient-orientation histogram, colour x edge-strength."""
    g = img.mean(axis=2)
    gx = np.zeros_like(g)
    gy = np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1] = g[2:] - g[:-2]
    mag = np.hypot(gx, gy)
    ori = np.minimum(((np.arctan2(gy, gx) % np.pi) / np.pi * 8).astype(int), 7)
    q = np.minimum((img * 4).astype(int), 3)
    colour = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    colour_hist = np.bincount(colour.ravel(), minlength=64) / colour.size
    ori_hist = np.bincount(ori.ravel(), weights=mag.ravel(), minlength=8)
    ori_hist /= ori_hist.sum() + 1e-6
    edge = np.minimum((mag * 8).astype(int), 3)
    colour_edge = np.bincount((colour * 4 + edge).ravel(), minlength=256) / colour.size
    return np.concatenate([colour_hist, ori_hist, colour_edge, [mag.mean()]])


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    root = generate_synthetic_dataset(tmp_path_factory.mktemp("task"), n_per_class=60, image_size=64, seed=0,
                                      progress=False)
    images, labels = [], []
    for ci, c in enumerate(FLOWER_CLASSES):
        for p in sorted((root / c).glob("*.jpg")):
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB"), np.float32) / 255.0)
            labels.append(ci)
    return np.stack(images), np.array(labels)


def test_mean_colour_is_a_weak_classifier_but_local_features_learn(small_dataset) -> None:
    """Measured at seed 0 (60/class, 64 px): mean-RGB nearest centroid ~0.28, local-feature LR ~0.73."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestCentroid
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = small_dataset
    train = np.arange(len(y)) % 3 != 0  # every third image of each class is held out

    mean_rgb = x.mean(axis=(1, 2))
    acc_mean = (NearestCentroid().fit(mean_rgb[train], y[train]).predict(mean_rgb[~train]) == y[~train]).mean()

    feats = np.stack([_local_features(im) for im in x])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1)).fit(feats[train], y[train])
    acc_local = clf.score(feats[~train], y[~train])

    assert acc_mean <= 0.6, f"mean colour alone separates the classes too well ({acc_mean:.2f})"
    assert acc_local >= 0.5, f"local features should be well above chance (0.2), got {acc_local:.2f}"
    assert acc_local >= acc_mean + 0.15, (acc_local, acc_mean)
