"""Pretrained-weight loading, tested offline with checkpoint files the tests write.

The real code path runs: URL → torch.hub cache (a `file://` URL stands in for the internet) → SHA-256
prefix check → `torch.load(weights_only=True)` → `load_state_dict(strict=True)` → new head.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from bagnet_lib.errors import UserError
from bagnet_lib.nets import weights
from bagnet_lib.nets.models import bagnet, build_model, resnet50


@pytest.fixture(autouse=True)
def hub_dir(tmp_path, monkeypatch):
    """A private torch.hub cache for every test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _published(tmp_path: Path, state: dict, stem: str, suffix: str = ".pth.tar", legacy: bool = False) -> Path:
    """Save `state` and name the file `<stem>-<first 8 hex of its SHA-256><suffix>`, as published.

    `legacy` writes torch's pre-1.6 (non-zip) format, which the 2019 BagNet checkpoints may use.
    """
    raw = tmp_path / "raw.pt"
    torch.save(state, raw, _use_new_zipfile_serialization=not legacy)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    path = tmp_path / "server" / f"{stem}-{digest[:8]}{suffix}"
    path.parent.mkdir(exist_ok=True)
    raw.rename(path)
    return path


def test_official_urls_and_hash_prefixes():
    assert weights.hash_prefix(weights.BAGNET_URLS["bagnet33"]) == "2ddd53ed"
    assert weights.hash_prefix(weights.BAGNET_URLS["bagnet17"]) == "105524de"
    assert weights.hash_prefix(weights.BAGNET_URLS["bagnet9"]) == "34f4ccd2"
    assert weights.RESNET50_URL.endswith("/resnet50-0676ba61.pth")


@pytest.mark.parametrize("name,legacy", [("bagnet9", False), ("bagnet33", True)])
def test_bagnet_pretrained_downloads_verifies_and_loads_strictly(tmp_path, monkeypatch, hub_dir, name, legacy):
    torch.manual_seed(1)
    imagenet = bagnet(name).state_dict()  # stands in for the published 1000-class checkpoint
    src = _published(tmp_path, imagenet, weights.BAGNET_URLS[name].rsplit("/", 1)[1].split("-")[0], legacy=legacy)
    monkeypatch.setitem(weights.BAGNET_URLS, name, src.as_uri())
    model = build_model(name, num_classes=5, pretrained=True)
    assert (hub_dir / "checkpoints" / src.name).is_file()  # went through the torch.hub cache
    own = model.state_dict()
    for key, value in imagenet.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key
    assert model.fc.weight.shape == (5, 2048)
    # BatchNorm momentum as in the official code: 0.001 in the stem, 0.1 in the blocks (from scratch: 0.1 everywhere)
    assert model.bn1.momentum == 0.001 and model.layer1[0].bn1.momentum == 0.1
    assert bagnet(name).bn1.momentum == 0.1
    # second time: from the cache, offline (the source is gone)
    src.unlink()
    build_model(name, num_classes=5, pretrained=True)


def test_resnet50_pretrained_through_the_cache(tmp_path, monkeypatch):
    torch.manual_seed(2)
    imagenet = resnet50().state_dict()
    src = _published(tmp_path, imagenet, "resnet50", ".pth")
    monkeypatch.setattr(weights, "RESNET50_URL", src.as_uri())
    model = resnet50(num_classes=5, pretrained=True)
    assert torch.equal(model.layer4[2].conv3.weight, imagenet["layer4.2.conv3.weight"])
    assert model.fc.out_features == 5


def test_download_with_wrong_hash_is_refused_and_removed(tmp_path, monkeypatch, hub_dir):
    good = _published(tmp_path, bagnet("bagnet33").state_dict(), "bagnet32")
    bad = good.with_name("bagnet32-deadbeef.pth.tar")
    good.rename(bad)
    monkeypatch.setitem(weights.BAGNET_URLS, "bagnet33", bad.as_uri())
    with pytest.raises(UserError, match="deadbeef") as err:
        build_model("bagnet33", 5, pretrained=True)
    assert "published hash" in str(err.value)
    assert not (hub_dir / "checkpoints" / bad.name).exists()


def test_a_tampered_file_in_the_cache_is_refused(tmp_path, monkeypatch, hub_dir):
    src = _published(tmp_path, bagnet("bagnet17").state_dict(), "bagnet16")
    monkeypatch.setitem(weights.BAGNET_URLS, "bagnet17", src.as_uri())
    cached = hub_dir / "checkpoints" / src.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the checkpoint")
    with pytest.raises(UserError, match=str(cached)):
        build_model("bagnet17", 5, pretrained=True)


def test_local_file_is_checked_and_can_skip_the_check(tmp_path):
    state = bagnet("bagnet9").state_dict()
    local = tmp_path / "my_copy.pth"
    torch.save(state, local)
    with pytest.raises(UserError, match="34f4ccd2"):
        weights.load_bagnet_imagenet(bagnet("bagnet9"), "bagnet9", local_file=local)
    model = weights.load_bagnet_imagenet(bagnet("bagnet9"), "bagnet9", local_file=local, check_hash=False)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    with pytest.raises(UserError, match="does not exist"):
        weights.load_bagnet_imagenet(bagnet("bagnet9"), "bagnet9", local_file=tmp_path / "missing.pth")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"conv1.weight": torch.zeros(1), "x": Payload()}, fh, protocol=2)
    with pytest.raises(UserError, match="weights_only"):
        weights.load_state_dict_file(path)


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "half.pth"
    torch.save(bagnet("bagnet9", width=0.125).state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match="half.pth"):
        weights.load_state_dict_file(path)


def test_checkpoint_for_other_classes_or_architecture_names_both(tmp_path):
    path = tmp_path / "five.pth"
    torch.save({"model": build_model("bagnet33", 5, width=0.125).state_dict()}, path)
    with pytest.raises(UserError, match="5 classes .* model 3"):
        weights.load_into(build_model("bagnet33", 3, width=0.125), weights.load_state_dict_file(path), path, "bagnet33")
    with pytest.raises(UserError, match="another architecture"):
        weights.load_into(build_model("resnet50", 5, width=0.125), weights.load_state_dict_file(path), path, "resnet50")


def test_pretrained_needs_full_width():
    with pytest.raises(UserError, match="width 1.0"):
        build_model("bagnet33", 5, pretrained=True, width=0.5)
