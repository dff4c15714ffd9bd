"""ImageNet weights: fetch (torch.hub cache), verify (SHA-256 prefix), load safely (`weights_only`).

Introduced in notebook 02 (`paper` profile). The official BagNet checkpoints and torchvision's
ResNet-50 weights carry the first hex digits of their SHA-256 in the file name, as torch.hub expects.
Unlike torch.hub, a file that is *already* in the cache (or given as a local path) is checked too,
so a corrupted or substituted file is refused instead of silently loaded.
"""
from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet50_Weights

from bagnet_lib.errors import UserError
from bagnet_lib.io import sha256_file

BAGNET_BASE_URL = ("https://bitbucket.org/wielandbrendel/bag-of-feature-pretrained-models/raw/"
                   "249e8fa82c0913623a807d9d35eeab9da7dcc2a8")
BAGNET_URLS = {
    "bagnet9": f"{BAGNET_BASE_URL}/bagnet8-34f4ccd2.pth.tar",
    "bagnet17": f"{BAGNET_BASE_URL}/bagnet16-105524de.pth.tar",
    "bagnet33": f"{BAGNET_BASE_URL}/bagnet32-2ddd53ed.pth.tar",
}
RESNET50_URL = ResNet50_Weights.IMAGENET1K_V1.url  # the paper's weights, from torchvision's weights API


def hash_prefix(url_or_name: str) -> str | None:
    """The SHA-256 prefix torch.hub reads from a file name like `bagnet32-2ddd53ed.pth.tar`."""
    match = torch.hub.HASH_REGEX.search(Path(url_or_name).name)
    return match.group(1) if match else None


def cached_checkpoint_path(url: str) -> Path:
    """Where torch.hub keeps the download of `url` ($TORCH_HOME/hub/checkpoints/<file name>)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def fetch_checkpoint(url: str, local_file: str | Path | None = None, check_hash: bool = True) -> Path:
    """Path of a verified checkpoint: `local_file` if given, else the torch.hub cache, downloading if needed.

    The expected hash comes from `url`'s file name. A mismatch raises `UserError` naming the file, the
    expected and the actual hash; torch.hub deletes a partial download itself.
    """
    expected = hash_prefix(url) if check_hash else None
    if local_file is not None:
        path = Path(local_file)
        if not path.is_file():
            raise UserError(f"Checkpoint file {path} does not exist. Pass the path of a downloaded "
                            f"copy of {url}, or leave it out to download into the torch.hub cache.")
    else:
        path = cached_checkpoint_path(url)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(url, str(path), hash_prefix=expected, progress=True)
            except RuntimeError as exc:  # torch.hub's "invalid hash value"
                raise UserError(f"The download of {url} did not match its published hash "
                                f"(expected SHA-256 prefix {expected}); the partial file was deleted. "
                                f"Details: {exc}") from exc
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                raise UserError(
                    f"Could not download pretrained weights from {url} ({exc}). This machine may be "
                    f"offline. Download the file elsewhere and either put it at {path} or pass its "
                    "path explicitly (`imagenet --weights PATH`); the flowers course's from-scratch profiles "
                    "(smoke, cpu, gpu) need no download."
                ) from exc
    if expected:
        actual = sha256_file(path)
        if not actual.startswith(expected):
            raise UserError(
                f"Checkpoint {path} has SHA-256 {actual[:16]}…, but {Path(url).name} must start with "
                f"{expected}. The file is corrupted or is not the published checkpoint; delete it and "
                "download it again (or pass check_hash=False for a checkpoint of your own)."
            )
    return path


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint with `weights_only=True`; unwrap `{"state_dict": …}` and `module.` prefixes."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign objects refused by weights_only
        raise UserError(
            f"Cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}. "
            "Only plain tensor checkpoints are accepted (torch.load with weights_only=True); the file "
            "may be truncated, corrupted or contain pickled code. Re-create or re-download it."
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"Checkpoint {path} does not hold a state_dict (a mapping of names to tensors).")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path, model_name: str) -> None:
    """`load_state_dict(strict=True)` with a readable error when the architectures differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if "fc.weight" in state and "fc.weight" in own and state["fc.weight"].shape != own["fc.weight"].shape:
            parts.append(f"the checkpoint has {state['fc.weight'].shape[0]} classes × "
                         f"{state['fc.weight'].shape[1]} features, the model {own['fc.weight'].shape[0]} × "
                         f"{own['fc.weight'].shape[1]}")
        if missing:
            parts.append(f"{len(missing)} parameters missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        other = [w for w in wrong if w[0] != "fc.weight" and w[0] != "fc.bias"]
        if other:
            parts.append(f"{len(other)} with other shapes (e.g. {other[0][0]}: file {other[0][1]}, model {other[0][2]})")
        raise UserError(f"Checkpoint {source} does not fit model {model_name}: {'; '.join(parts)}. "
                        "It was made for another architecture, width or number of classes; use the "
                        "matching model settings or another checkpoint.")
    model.load_state_dict(state, strict=True)


def load_bagnet_imagenet(model: nn.Module, name: str, local_file: str | Path | None = None,
                         check_hash: bool = True) -> nn.Module:
    """Load the official ImageNet BagNet checkpoint (1000 classes) into `model`, strictly."""
    path = fetch_checkpoint(BAGNET_URLS[name], local_file, check_hash)
    load_into(model, load_state_dict_file(path), path, name)
    return model


def load_resnet50_imagenet(model: nn.Module, local_file: str | Path | None = None,
                           check_hash: bool = True) -> nn.Module:
    """Load torchvision's ResNet50_Weights.IMAGENET1K_V1 (the paper's weights) into `model`, strictly."""
    path = fetch_checkpoint(RESNET50_URL, local_file, check_hash)
    load_into(model, load_state_dict_file(path), path, "resnet50")
    return model
