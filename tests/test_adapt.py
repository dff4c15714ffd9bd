"""FixRes adaptation (nets/adapt.py) and per-network training settings (Profile.bagnet_settings)."""
from __future__ import annotations

import pytest
import torch

from bagnet_lib.course.pipeline import prepare_run, train_step
from bagnet_lib.data.split import make_split
from bagnet_lib.data.tensors import eval_batch, load_split_tensors, normalize
from bagnet_lib.errors import UserError
from bagnet_lib.nets import adapt as adapt_mod
from bagnet_lib.nets.adapt import adapt_step, batchnorms, finetune_head, recalibrate_batchnorm
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.profiles import Profile, get_profile, override_args, parse_overrides
from bagnet_lib.nets.train import train_model

SIZE = 48


@pytest.fixture(scope="module")
def train_data(synthetic_root):
    df = make_split(synthetic_root, seed=0)
    classes = sorted(df["label"].unique())
    return load_split_tensors(synthetic_root, df, "train", classes, SIZE, progress=False)


def _model(name: str = "resnet50"):
    torch.manual_seed(0)
    return build_model(name, 5, width=0.125)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_recalibration_sets_the_first_batchnorm_to_the_mean_of_its_inputs_and_changes_no_weight(train_data):
    model = _model().eval()
    images = eval_batch(train_data, SIZE)[:24]
    before = _state(model)
    momenta = [bn.momentum for bn in batchnorms(model)]
    recalibrate_batchnorm(model, images, batch_size=8, precision="fp32")
    # the first BatchNorm sees conv1 of the (every other one flipped) images: with equal batches, the average of the
    # batch means is the mean over all of them
    flipped = images.clone()
    flipped[0::2] = flipped[0::2].flip(-1)
    with torch.no_grad():
        conv = model.conv1(normalize(flipped))
    torch.testing.assert_close(model.bn1.running_mean, conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training and [bn.momentum for bn in batchnorms(model)] == momenta
    after = model.state_dict()
    for key, value in before.items():
        if "running_" in key or "num_batches_tracked" in key:
            continue
        assert torch.equal(after[key], value), key  # only the statistics moved
    assert not torch.equal(after["bn1.running_var"], before["bn1.running_var"])


def test_recalibration_on_images_sorted_by_brightness_still_sees_their_whole_spread(train_data):
    """A split lists its images class by class: batches taken in that order each have their own mean, and the
    average of their variances misses the spread between them. The random order keeps it."""
    images = eval_batch(train_data, SIZE)
    images = images[images.float().mean(dim=(1, 2, 3)).argsort()]  # dark to bright: every batch alike inside
    model = _model().eval()
    recalibrate_batchnorm(model, images, batch_size=8, precision="fp32")
    flipped = images.clone()
    flipped[0::2] = flipped[0::2].flip(-1)
    with torch.no_grad():
        whole = model.conv1(normalize(flipped)).var(dim=(0, 2, 3))
        in_order = torch.stack([model.conv1(normalize(b)).var(dim=(0, 2, 3)) for b in flipped.split(8)]).mean(0)
    ratio = (model.bn1.running_var / whole).median().item()
    assert 0.85 < ratio < 1.15, ratio
    assert (in_order / whole).median().item() < ratio - 0.05  # what the sorted order would have given


def test_head_finetuning_trains_the_classifier_and_the_last_batchnorm_only_and_repeats_exactly(train_data):
    p = get_profile("smoke", image_size=SIZE, batch_size=8, lr=0.05, precision="fp32")
    images = eval_batch(train_data, SIZE)
    results = []
    for _ in range(2):
        model = _model("bagnet33").eval()
        before = _state(model)
        losses = finetune_head(model, images, train_data.labels, p, epochs=2, seed=0)
        results.append((_state(model), losses))
        last_bn = [name for name, m in model.named_modules() if m is batchnorms(model)[-1]][0]
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == {"fc.weight", "fc.bias", f"{last_bn}.weight", f"{last_bn}.bias"}
        assert all(q.requires_grad for q in model.parameters())  # nothing left frozen afterwards
        assert len(losses) == 2 and not model.training
    assert results[0][1] == results[1][1]
    assert all(torch.equal(v, results[1][0][k]) for k, v in results[0][0].items())


def _best_checkpoint(tmp_path, model) -> str:
    path = tmp_path / "resnet50_best.pt"
    torch.save({"model": model.state_dict(), "epoch": 3, "val_acc": 0.5}, path)
    return path


def test_adapt_step_writes_once_then_loads_and_adapts_again_when_the_settings_change(train_data, tmp_path,
                                                                                    monkeypatch):
    model = _model()
    best = _best_checkpoint(tmp_path, model)
    p = get_profile("smoke", image_size=SIZE, precision="fp32", eval_batch_size=16)
    assert adapt_step(model, train_data, p, best, seed=0) is None  # nothing asked: nothing written
    assert not (tmp_path / "resnet50_adapted.pt").exists()
    p = get_profile("smoke", image_size=SIZE, precision="fp32", eval_batch_size=16, adapt_bn=True)
    path = adapt_step(model, train_data, p, best, seed=0)
    assert path == tmp_path / "resnet50_adapted.pt" and path.is_file()
    adapted = _state(model)

    def must_not_run(*a, **k):
        raise AssertionError("adapted again although the settings are unchanged")

    monkeypatch.setattr(adapt_mod, "recalibrate_batchnorm", must_not_run)
    fresh = _model()
    adapt_step(fresh, train_data, p, best, seed=0)  # loaded from the file
    assert all(torch.equal(v, adapted[k]) for k, v in fresh.state_dict().items())
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(adapt_mod, "finetune_head", lambda *a, **k: calls.append(k) or [0.0])
    adapt_step(_model(), train_data, get_profile("smoke", image_size=SIZE, precision="fp32", adapt_bn=True,
                                                 adapt_epochs=1), best, seed=0)
    assert len(calls) == 1  # other settings: adapted again
    assert torch.load(path, weights_only=True)["settings"]["adapt_epochs"] == 1


def test_changing_only_the_adaptation_reuses_the_finished_training(train_data, tmp_path):
    p = get_profile("smoke", image_size=SIZE, epochs=1, batch_size=8, precision="fp32")
    first = train_model(_model(), train_data, train_data, p, tmp_path, "resnet50", progress=False)
    again = train_model(_model(), train_data, train_data, Profile(**{**p.to_dict(), "adapt_bn": True, "n_seeds": 7}),
                        tmp_path, "resnet50", progress=False)
    assert again.resumed_from_epoch == 1 and again.best_epoch == first.best_epoch
    with pytest.raises(UserError, match="other settings"):
        train_model(_model(), train_data, train_data, Profile(**{**p.to_dict(), "train_size": 32}), tmp_path,
                    "resnet50", progress=False)


@pytest.mark.slow
def test_the_course_evaluates_the_adapted_network(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BAGNET_NO_DOWNLOAD", "1")
    p = get_profile("smoke", image_size=SIZE, images_per_class=6, adapt_bn=True, precision="fp32")
    run = prepare_run(tmp_path / "run", p, synthetic_root, progress=False)
    metrics = train_step(run, "resnet50", progress=False)
    assert metrics["adapted"]["bn"] and metrics["adapted"]["image_size"] == SIZE
    assert {"train", "val", "test"} <= set(metrics)
    assert run.checkpoint("resnet50").name == "resnet50_adapted.pt"
    saved = torch.load(run.checkpoint("resnet50"), weights_only=True)["model"]
    best = torch.load(run.run_dir / "checkpoints" / "resnet50_best.pt", weights_only=True)["model"]
    loaded = run.model("resnet50").state_dict()
    assert torch.equal(loaded["bn1.running_mean"], saved["bn1.running_mean"])
    assert not torch.equal(saved["bn1.running_mean"], best["bn1.running_mean"])
    val = run.tensors("val", progress=False)
    with torch.no_grad():
        acc = (run.model("resnet50")(normalize(eval_batch(val, SIZE))).argmax(1) == val.labels).float().mean().item()
    assert acc == pytest.approx(metrics["val"]["acc"], abs=1e-6)  # the val number is the adapted network's


def test_bagnet_settings_apply_to_bagnets_only_and_travel_through_set():
    cpu = get_profile("cpu")
    p = get_profile("cpu", **parse_overrides(["train_size=176", "bagnet.train_size=136", "bagnet.crop_scale_max=0.7"]))
    assert p.bagnet_settings == {**cpu.bagnet_settings, "train_size": 136, "crop_scale_max": 0.7}  # merged
    assert (p.for_model("resnet50").train_crop, p.for_model("bagnet33").train_crop) == (176, 136)
    assert p.for_model("bagnet17").crop_scale_max == 0.7 and p.for_model("resnet50").crop_scale_max == cpu.crop_scale_max
    assert p.for_model("resnet50").epochs == cpu.epochs
    assert p.for_model("bagnet33").epochs == cpu.bagnet_settings.get("epochs", cpu.epochs)
    assert get_profile("cpu", **parse_overrides(override_args(p))) == p  # what a torchrun child is given
    for bad in (["bagnet.image_size=96"], ["bagnet.width=1"], ["bagnet.nope=1"]):
        with pytest.raises(UserError, match="--set"):
            parse_overrides(bad)
    with pytest.raises(UserError, match="image_size"):
        Profile("x", bagnet_settings={"image_size": 96})


def test_the_adaptation_is_described_from_the_profile_not_typed():
    """Notebooks 02 and 03 print this sentence; it follows each network's own settings (`for_model`)."""
    from bagnet_lib.nets.adapt import describe_adaptation

    cpu = get_profile("cpu")
    said = describe_adaptation(cpu, "resnet50")
    assert cpu.adapt_bn is False and "no BatchNorm recalibration" in said  # the course's network got none
    assert f"{cpu.adapt_epochs} epochs of the classifier and last BatchNorm at {cpu.image_size} px" in said
    assert "resnet50_adapted.pt" in said
    both = describe_adaptation(get_profile("cpu", bagnet_settings={"adapt_bn": True, "adapt_epochs": 1}), "bagnet17")
    assert f"BatchNorm statistics recomputed at {cpu.image_size} px" in both and "1 epoch of the" in both
    assert "BagNet-17" in both
    smoke = get_profile("smoke")
    none = describe_adaptation(smoke, "resnet50")
    assert "no BatchNorm recalibration" in none and "no fine-tuning" in none
    assert f"as trained on {smoke.train_crop} px crops" in none and "adapted.pt" not in none


def test_adaptation_runs_in_the_precision_training_ran_in(train_data, monkeypatch):
    """Where bf16 would be emulated (`resolve_precision` gives fp32), the adaptation of a bf16 profile computes in
    fp32, as training and evaluation do, not under an emulated bf16 autocast."""
    from bagnet_lib.nets import precision as precision_mod

    monkeypatch.setattr(precision_mod, "cpu_has_fast_bf16", lambda: False)
    images = eval_batch(train_data, SIZE)[:16]
    stats = []
    for precision in ("bf16", "fp32"):
        model = _model().eval()
        recalibrate_batchnorm(model, images, batch_size=8, precision=precision)
        finetune_head(model, images, train_data.labels[:16], get_profile("smoke", precision=precision, batch_size=8),
                      epochs=1, seed=0)
        stats.append(_state(model))
    for key, value in stats[0].items():
        assert torch.equal(value, stats[1][key]), key
    monkeypatch.setattr(precision_mod, "cpu_has_fast_bf16", lambda: True)  # and where bf16 is real, it is used
    model = _model().eval()
    recalibrate_batchnorm(model, images, batch_size=8, precision="bf16")
    assert not torch.equal(model.bn1.running_var, stats[1]["bn1.running_var"])
