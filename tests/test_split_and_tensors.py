"""Splits (stratified, deterministic, duplicates together, the paper's manifest) and the tensor pipeline."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from bagnet_lib.data.folder import Sample, list_images, resolve_data_dir
from bagnet_lib.data.split import check_splittable, make_split, read_manifest, stratified_split, subsample
from bagnet_lib.data.tensors import (
    decode_images,
    eval_transform,
    load_split_tensors,
    random_resized_crop_params,
    train_batches,
    train_transform,
)
from bagnet_lib.errors import UserError
from tests.conftest import PAPER_SPLIT


def _samples(per_class: dict[str, int]) -> list[Sample]:
    return [Sample(f"{c}/{i:04d}.jpg", c) for c, n in per_class.items() for i in range(n)]


def test_stratified_proportions_and_determinism():
    samples = _samples({"a": 100, "b": 57, "c": 10})
    df = stratified_split(samples, seed=1)
    counts = df.groupby(["label", "split"]).size().unstack()
    assert (counts.loc["a", "train"], counts.loc["a", "val"], counts.loc["a", "test"]) == (70, 20, 10)
    for label, n in (("b", 57), ("c", 10)):
        row = counts.loc[label]
        assert abs(row["train"] - 0.7 * n) <= 1 and abs(row["val"] - 0.2 * n) <= 1 and abs(row["test"] - 0.1 * n) <= 1
    pd.testing.assert_frame_equal(df, stratified_split(samples, seed=1))
    assert not df.equals(stratified_split(samples, seed=2))


def test_duplicate_groups_stay_in_one_split():
    samples = _samples({"a": 60, "b": 60})
    groups = [[f"a/{i:04d}.jpg" for i in range(k, k + 4)] for k in range(0, 40, 4)]
    for seed in range(5):
        df = stratified_split(samples, seed=seed, duplicate_groups=groups).set_index("path")
        for g in groups:
            assert df.loc[g, "split"].nunique() == 1


def test_unsplittable_datasets_are_refused_before_training():
    with pytest.raises(UserError, match="at least two class"):
        check_splittable(_samples({"a": 10}))
    with pytest.raises(UserError, match="fewer than 3"):
        check_splittable(_samples({"a": 10, "b": 2}))


def test_make_split_on_synthetic_data(synthetic_root):
    df = make_split(synthetic_root, seed=0)
    assert len(df) == 80 and set(df["split"]) == {"train", "val", "test"}
    assert df.groupby("label").size().tolist() == [16] * 5
    assert set(df["path"]) == {s.path for s in list_images(synthetic_root)}


def test_subsample_keeps_every_class_and_split():
    df = stratified_split(_samples({"a": 100, "b": 100}), seed=0)
    small = subsample(df, 10, seed=0)
    assert small.groupby(["label", "split"]).size().to_dict() == {
        ("a", "test"): 1, ("a", "train"): 7, ("a", "val"): 2, ("b", "test"): 1, ("b", "train"): 7, ("b", "val"): 2}


def test_manifest_errors_name_the_file(tmp_path, synthetic_root):
    bad = tmp_path / "m.csv"
    bad.write_text("file,part\nx,y\n")
    with pytest.raises(UserError, match="m.csv"):
        read_manifest(synthetic_root, bad)
    bad.write_text("path,split\ndaisy/nope.jpg,train\n")
    with pytest.raises(UserError, match="not under"):
        read_manifest(synthetic_root, bad)


def test_missing_dataset_error_names_every_path(tmp_path, monkeypatch):
    from bagnet_lib.data import folder

    monkeypatch.setenv("BAGNET_DATA", str(tmp_path / "env_data"))
    monkeypatch.setattr(folder, "DEFAULT_DATA_DIR", tmp_path / "data" / "flowers")
    with pytest.raises(UserError) as err:
        resolve_data_dir(tmp_path / "arg_data")
    msg = str(err.value)
    assert "arg_data" in msg and "data download" in msg and "BAGNET_DATA" in msg and "synthetic" in msg
    with pytest.raises(UserError) as err:
        resolve_data_dir(None)
    assert "env_data" in str(err.value) and "data/flowers" in str(err.value)


@pytest.mark.shared_data
def test_paper_manifest_gives_2968_848_426(flowers):
    if not PAPER_SPLIT.is_file():
        pytest.skip(f"the paper's split manifest is not here ({PAPER_SPLIT})")
    df = read_manifest(flowers, PAPER_SPLIT)
    assert df["split"].value_counts().to_dict() == {"train": 2968, "val": 848, "test": 426}


@pytest.mark.shared_data
def test_own_split_of_the_flowers_excludes_conflicts_and_keeps_duplicates_together(flowers):
    from bagnet_lib.data.audit import audit_dataset

    audit = audit_dataset(flowers, progress=False)
    assert len(audit.conflict_groups) == 8
    df = make_split(flowers, seed=0, audit=audit)
    conflicted = {p for g in audit.conflict_groups for p in g}
    assert not conflicted & set(df["path"])
    assert len(df) == 4242 - len(conflicted)
    split_of = df.set_index("path")["split"]
    for group in audit.duplicate_groups:
        present = [p for p in group if p in split_of.index]
        assert split_of.loc[present].nunique() <= 1
    frac = df["split"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.7) < 0.01 and abs(frac["val"] - 0.2) < 0.01 and abs(frac["test"] - 0.1) < 0.01


# ----------------------------------------------------------------------------- tensors
def test_decode_cache_is_keyed_by_content(tmp_path):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    Image.new("RGB", (80, 60), (255, 0, 0)).save(root / "a" / "x.png")
    cache = tmp_path / "cache.pt"
    first = decode_images(root, ["a/x.png"], 40, cache, progress=False)
    assert first[0].shape == (3, 40, 53) and first[0].dtype == torch.uint8 and cache.is_file()
    assert torch.equal(decode_images(root, ["a/x.png"], 40, cache, progress=False)[0], first[0])
    Image.new("RGB", (80, 60), (0, 0, 255)).save(root / "a" / "x.png")  # same name, new content
    again = decode_images(root, ["a/x.png"], 40, cache, progress=False)[0]
    assert again[2].float().mean() > 200 and again[0].float().mean() < 50


def test_exif_orientation_and_modes_are_normalised(tmp_path):
    root = tmp_path / "d"
    (root / "a").mkdir(parents=True)
    img = Image.new("RGB", (60, 40), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90°: stored landscape, shown portrait
    img.save(root / "a" / "rot.jpg", exif=exif)
    Image.new("L", (40, 40), 128).save(root / "a" / "gray.png")
    Image.new("CMYK", (40, 40), (0, 0, 0, 0)).save(root / "a" / "cmyk.jpg")
    rot, gray, cmyk = decode_images(root, ["a/rot.jpg", "a/gray.png", "a/cmyk.jpg"], 40, None, progress=False)
    assert rot.shape == (3, 60, 40)  # portrait after EXIF
    assert gray.shape == (3, 40, 40) and cmyk.shape == (3, 40, 40)


def test_transforms_and_reproducible_epochs(synthetic_root):
    df = make_split(synthetic_root, seed=0)
    data = load_split_tensors(synthetic_root, df, "train", sorted(df["label"].unique()), 48, progress=False)
    assert len(data) == int((df["split"] == "train").sum())
    assert eval_transform(data.images[0], 48).shape == (3, 48, 48)
    g = torch.Generator().manual_seed(0)
    assert train_transform(data.images[0], 48, g).shape == (3, 48, 48)
    a = list(train_batches(data, 48, 8, seed=0, epoch=3))
    b = list(train_batches(data, 48, 8, seed=0, epoch=3))
    c = list(train_batches(data, 48, 8, seed=0, epoch=4))
    assert len(a) == len(data) // 8
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])


def test_crop_scale_min_bounds_the_crop_area():
    """scale_min=1 with a square image is the whole image resized; the default crops much smaller areas."""
    img = torch.arange(3 * 64 * 64, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 64, 64)
    g = torch.Generator().manual_seed(0)
    whole = torch.nn.functional.interpolate(img[None].float(), size=32, mode="bilinear", antialias=True)[0]
    for _ in range(5):
        out = train_transform(img, 32, g, scale_min=1.0).float()
        assert torch.allclose(out, whole, atol=1) or torch.allclose(out, whole.flip(-1), atol=1)
    areas = [random_resized_crop_params(64, 64, g, scale=(0.08, 1.0)) for _ in range(50)]
    assert min(ch * cw for _, _, ch, cw in areas) < 0.3 * 64 * 64
    assert min(ch * cw for _, _, ch, cw in (random_resized_crop_params(64, 64, g, scale=(0.5, 1.0))
                                            for _ in range(50))) >= 0.45 * 64 * 64


def test_crop_scale_max_bounds_the_crop_area_from_above_and_reaches_the_training_batches():
    """Crops of 16-50 % of the area (objects at the test images' size, FixRes) never cover more than half the
    image, and the profile's `crop_scale_max` is what `epoch_batches` crops with."""
    from bagnet_lib.data.tensors import ImageTensors
    from bagnet_lib.nets.profiles import get_profile
    from bagnet_lib.nets.train import epoch_batches

    g = torch.Generator().manual_seed(0)
    areas = [ch * cw / 64 ** 2 for _, _, ch, cw in (random_resized_crop_params(64, 64, g, scale=(0.16, 0.5))
                                                    for _ in range(200))]
    assert 0.13 < min(areas) < 0.25 and 0.4 < max(areas) < 0.54
    img = torch.arange(3 * 64 * 64, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 64, 64)
    data = ImageTensors([img] * 4, torch.zeros(4, dtype=torch.long), ["a"] * 4, ["c"])
    whole = torch.nn.functional.interpolate(img[None].float(), size=32, mode="bilinear", antialias=True)[0]
    def batch(**crops):
        profile = get_profile("smoke", image_size=32, batch_size=4, **crops)
        return next(iter(epoch_batches(data, profile, seed=0, epoch=0)))[0].float()
    full = batch(crop_scale_min=1.0, crop_scale_max=1.0)
    assert all(torch.allclose(x, whole, atol=1) or torch.allclose(x, whole.flip(-1), atol=1) for x in full)
    quarter = batch(crop_scale_min=0.25, crop_scale_max=0.25)
    assert not any(torch.allclose(x, whole, atol=1) or torch.allclose(x, whole.flip(-1), atol=1) for x in quarter)


def test_a_file_that_vanished_after_the_split_is_a_clear_error(synthetic_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(synthetic_root, root)
    df = make_split(root, seed=0)
    victim = df[df["split"] == "val"]["path"].iloc[0]
    (root / victim).unlink()
    with pytest.raises(UserError, match="data split"):
        load_split_tensors(root, df, "val", sorted(df["label"].unique()), 48, progress=False)


def test_a_class_too_small_for_all_three_splits_is_refused(tmp_path, synthetic_root):
    root = tmp_path / "few"
    shutil.copytree(synthetic_root, root)
    for extra in sorted((root / "tulip").glob("*.jpg"))[4:]:
        extra.unlink()  # 4 tulips: 70/20/10 leaves tulip without a test image
    with pytest.raises(UserError, match=r"tulip/ gets none in test \(4 images\)"):
        make_split(root, seed=0)
