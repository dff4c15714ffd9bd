"""The networks shipped with the repository: written by the publish step, refused when modified, laid out as a ready
run directory (notebooks 02 and 03 skip training, 04 runs), and `verify` recomputing the published numbers from them.
Tested on a smoke course, on the shared flowers when present, else on a non-synthetic copy of the small synthetic set."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

from bagnet_lib.course.record import read_records
from bagnet_lib.course.reference import lay_out_reference, publish_networks
from bagnet_lib.course.runner import NOTEBOOK_DIR, reproduce, run_notebook
from bagnet_lib.errors import UserError
from bagnet_lib.nets import shipped
from bagnet_lib.nets.weights import load_state_dict_file
from tests.conftest import PAPER_SPLIT, ROOT, shared_flowers


# ----------------------------------------------------------------------------------- the shipped files alone
def _ship_tiny(tmp_path: Path) -> Path:
    net = torch.nn.Linear(4, 3)
    ckpt = tmp_path / "tiny_adapted.pt"
    torch.save({"model": net.state_dict(), "settings": {}}, ckpt)
    split = tmp_path / "split.csv"
    split.write_text("path,label,split\na/1.jpg,a,test\n")
    return shipped.ship_networks({"tiny": ckpt}, split, tmp_path / "networks", {"profile": "smoke", "seed": 0})


def test_shipped_networks_carry_their_hash_and_load_only_when_it_matches(tmp_path):
    folder = _ship_tiny(tmp_path)
    man = shipped.read_manifest(folder)
    assert man["networks"]["tiny"]["sha256"] == shipped.sha256_file(folder / "tiny.pt") and man["profile"] == "smoke"
    assert set(shipped.load_shipped(folder, "tiny")) == {"weight", "bias"}
    data = bytearray((folder / "tiny.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (folder / "tiny.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"tiny.pt has SHA-256 .* so nothing is computed from it.*git checkout"):
        shipped.load_shipped(folder, "tiny")
    (folder / "tiny.pt").write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(UserError, match="has 100 bytes where the manifest says"):
        shipped.load_shipped(folder, "tiny")
    with pytest.raises(UserError, match="No shipped networks in .*networks.json is missing"):
        shipped.read_manifest(tmp_path)


# ----------------------------------------------------------------------------------- a smoke course, published
@pytest.fixture(scope="module")
def published(tmp_path_factory, synthetic_root):
    """A smoke course, and a `results/<profile>`-like folder published from it (its results and shipped networks)."""
    base = tmp_path_factory.mktemp("reference")
    data = shared_flowers()
    if data is None:  # the synthetic set is refused as the networks' data (it is not the flowers): a plain copy
        data = base / "flowers"
        shutil.copytree(synthetic_root, data, ignore=shutil.ignore_patterns("synthetic.json"))
    manifest = PAPER_SPLIT if shared_flowers() is not None and PAPER_SPLIT.is_file() else None
    run_dir = base / "run"
    reproduce("smoke", run_dir, data, manifest, seed=0, cell_timeout=600)
    results = base / "results" / "smoke"
    shutil.copytree(run_dir / "results", results)
    publish_networks(run_dir, results)
    return run_dir, results, data


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_publishing_ships_exactly_the_evaluated_networks_with_a_manifest(published):
    run_dir, results, data = published
    man = shipped.read_manifest(results / "networks")
    assert sorted(man["networks"]) == ["bagnet33", "resnet50"] and man["seed"] == 0 and man["profile"] == "smoke"
    assert man["torch"] == torch.__version__ and man["n_images"]["test"] > 0 and man["data_fingerprint"]
    for name, entry in man["networks"].items():
        state = shipped.load_shipped(results / "networks", name)
        evaluated = load_state_dict_file(run_dir / "checkpoints" / entry["checkpoint"])  # what 04 and 05 evaluated
        assert entry["checkpoint"] == f"{name}_best.pt"  # smoke adapts nothing: its evaluated network is the best one
        assert state.keys() == evaluated.keys() and all(torch.equal(state[k], evaluated[k].float()) for k in state)
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert (results / "networks" / "split.csv").read_text() == (run_dir / "split.csv").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_reference_run_skips_training_and_notebook_04_runs_on_the_shipped_networks(published, tmp_path):
    _, results, data = published
    ref = tmp_path / "ref"
    run = lay_out_reference(ref, results, data, progress=False)
    assert run.trained() == ["bagnet33", "resnet50"] and not list((ref / "checkpoints").glob("*_last.pt"))
    params = {"PROFILE": "smoke", "RUN_DIR": str(ref), "DATA_DIR": str(data), "MANIFEST": None, "SEED": 0}
    run_notebook("02_train_resnet50.ipynb", ref, params, timeout=600, notebook_dir=NOTEBOOK_DIR)
    out = nbformat.read(ref / "notebooks" / "02_train_resnet50.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in out.cells if c.cell_type == "code" for o in c.outputs)
    assert "the network shipped with the repository" in text and "nothing to train here" in text
    assert not list((ref / "checkpoints").glob("*_last.pt"))  # nothing was trained
    run_notebook("04_blackout_experiments.ipynb", ref, {**params, "BAGNET": None, "INTERACTIVE": False}, timeout=600,
                 notebook_dir=NOTEBOOK_DIR)
    record = read_records(ref / "notebooks" / "04_blackout_experiments.ipynb")
    assert record["grid"] == list(run.model("bagnet33").geometry.grid_size(run.profile.image_size, run.profile.image_size))
    assert (ref / "results" / "blackout_paper.csv").is_file() and (ref / "cache" / "bagnet33_test_logits.pt").is_file()
    again = lay_out_reference(ref, results, data, progress=False)  # idempotent
    assert again.split.equals(run.split)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_verify_matches_the_published_numbers_and_fails_on_a_flipped_byte_or_an_edited_number(published, tmp_path):
    _, results, data = published
    mine = tmp_path / "results"
    shutil.copytree(results, mine)
    cmd = [sys.executable, "-m", "bagnet_lib", "verify", "--profile", "smoke", "--results-dir", str(mine),
           "--data-dir", str(data), "--no-progress"]
    ok = subprocess.run([*cmd, "--run-dir", str(tmp_path / "v1")], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "do not" in ok.stdout and ", 0 do not" in ok.stdout and "BagNet-33 test accuracy" in ok.stdout
    assert "verdict (c) patch" in ok.stdout and "drop curve, 50% dropped, mean: acc_mean" in ok.stdout
    # an edited published accuracy
    summary = json.loads((mine / "summary.json").read_text())
    summary["bagnet33"]["test"]["acc"] += 1 / summary["n_test"]
    (mine / "summary.json").write_text(json.dumps(summary))
    edited = subprocess.run([*cmd, "--run-dir", str(tmp_path / "v2")], capture_output=True, text=True, cwd=ROOT,
                            timeout=900)
    assert edited.returncode == 1 and "BagNet-33 test accuracy" in edited.stdout
    bad = [line for line in edited.stdout.splitlines() if line.rstrip().endswith("NO")]
    assert bad and all("BagNet-33 test accuracy" in line for line in bad[:1])
    # a flipped byte in a shipped network: one paragraph, no traceback, nothing computed
    net = mine / "networks" / "bagnet33.pt"
    data_bytes = bytearray(net.read_bytes())
    data_bytes[len(data_bytes) // 3] ^= 0x01
    net.write_bytes(bytes(data_bytes))
    flipped = subprocess.run([*cmd, "--run-dir", str(tmp_path / "v3")], capture_output=True, text=True, cwd=ROOT,
                             timeout=900)
    assert flipped.returncode != 0 and "Traceback" not in flipped.stderr
    assert "bagnet33.pt has SHA-256" in flipped.stderr and "nothing is computed from it" in flipped.stderr
    assert not (tmp_path / "v3" / "cache").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_shipped_networks_are_never_laid_out_on_other_images(published, tmp_path):
    _, results, data = published
    other = tmp_path / "other"
    shutil.copytree(data, other, copy_function=os.symlink)  # the same images, as links
    split = (results / "networks" / "split.csv").read_text()
    rel = next(line.split(",")[0] for line in split.splitlines()[1:])
    (other / rel).unlink()  # one image the networks were trained or tested on is missing
    with pytest.raises(UserError, match=r"were trained on .* lacks 1 of their images .*data download --source cs229"):
        lay_out_reference(tmp_path / "ref", results, other, progress=False)
    assert not (tmp_path / "ref").exists()
    with pytest.raises(UserError, match="no such dataset was found.*Numbers computed on other images"):
        lay_out_reference(tmp_path / "ref", results, tmp_path / "nowhere", progress=False)
