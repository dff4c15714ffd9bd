"""Training: the loss falls on synthetic images; an interrupted run resumes to the same final weights."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from bagnet_lib import train as train_mod
from bagnet_lib.data.split import make_split
from bagnet_lib.data.tensors import eval_batch, load_split_tensors
from bagnet_lib.errors import UserError
from bagnet_lib.metrics import cross_entropy
from bagnet_lib.models import build_model
from bagnet_lib.profiles import get_profile
from bagnet_lib.train import predict, train_model

SIZE = 48


@pytest.fixture(scope="module")
def data(synthetic_root):
    df = make_split(synthetic_root, seed=0)
    classes = sorted(df["label"].unique())
    return tuple(load_split_tensors(synthetic_root, df, s, classes, SIZE, progress=False) for s in ("train", "val"))


def _profile(**kw):
    base = dict(image_size=SIZE, width=0.125, epochs=3, batch_size=8, lr=0.05, weight_decay=0.0,
                schedule="cosine", warmup_epochs=0, label_smoothing=0.0)
    return get_profile("smoke", **{**base, **kw})


def _model(name="bagnet33"):
    torch.manual_seed(0)
    return build_model(name, 5, width=0.125)


@pytest.mark.slow
def test_loss_falls_on_the_training_images(tmp_path_factory, tmp_path):
    from bagnet_lib.data.synthetic import generate_synthetic_dataset

    root = generate_synthetic_dataset(tmp_path_factory.mktemp("syn40"), 40, 64, seed=0, progress=False)
    df = make_split(root, seed=0)
    classes = sorted(df["label"].unique())
    train, val = (load_split_tensors(root, df, s, classes, SIZE, progress=False) for s in ("train", "val"))
    profile = _profile(epochs=15, batch_size=16, optimizer="adamw", lr=2e-3)
    model = _model("resnet50")
    result = train_model(model, train, val, profile, tmp_path, "r50", progress=False)
    hist = result.history
    assert list(hist["epoch"]) == list(range(1, 16))
    assert hist["train_loss"].iloc[-3:].mean() < hist["train_loss"].iloc[:3].mean() - 0.1
    # the trained model fits its training images better than chance (ln 5 = 1.609)
    after = cross_entropy(predict(model, eval_batch(train, SIZE)), train.labels)
    assert after < 1.5, after
    assert (tmp_path / "r50_best.pt").is_file() and (tmp_path / "r50_last.pt").is_file()
    assert pd.read_csv(tmp_path / "r50_history.csv").shape[0] == 15
    assert result.best_val_acc == hist["val_acc"].max()


def test_an_interrupted_run_resumes_to_identical_weights(data, tmp_path, monkeypatch):
    train, val = data
    profile = _profile(epochs=3)
    straight = _model()
    train_model(straight, train, val, profile, tmp_path / "a", "bag", seed=7, progress=False)

    real = train_mod.train_batches

    def dies_in_epoch_2(*args, **kw):  # Ctrl-C halfway through the second epoch
        for i, batch in enumerate(real(*args, **kw)):
            if kw.get("epoch", args[4] if len(args) > 4 else None) == 1 and i == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(train_mod, "train_batches", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_model(_model(), train, val, profile, tmp_path / "b", "bag", seed=7, progress=False)
    monkeypatch.setattr(train_mod, "train_batches", real)
    assert len(pd.read_csv(tmp_path / "b" / "bag_history.csv")) == 1  # epoch 1 was saved, epoch 2 was not

    resumed_model = _model()
    result = train_model(resumed_model, train, val, profile, tmp_path / "b", "bag", seed=7, progress=False)
    assert result.resumed_from_epoch == 1
    for (k, a), b in zip(straight.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k
    # finished: calling again trains nothing and returns the same history
    again = train_model(_model(), train, val, profile, tmp_path / "b", "bag", seed=7, progress=False)
    assert again.resumed_from_epoch == 3 and again.history.equals(result.history)


def test_resuming_with_other_settings_is_refused(data, tmp_path):
    train, val = data
    train_model(_model(), train, val, _profile(epochs=1), tmp_path, "bag", progress=False)
    with pytest.raises(UserError, match="other settings"):
        train_model(_model(), train, val, _profile(epochs=1, lr=0.5), tmp_path, "bag", progress=False)


def test_feature_extraction_changes_only_the_head(data, tmp_path):
    train, val = data
    torch.manual_seed(0)
    model = build_model("bagnet33", 5, feature_extract=True, width=0.125)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_model(model, train, val, _profile(epochs=1, feature_extract=True), tmp_path, "fe", progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k]) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert changed == {"fc.weight", "fc.bias"}


def test_predict_patch_logits_shape(data):
    train, _ = data
    model = _model().eval()
    out = predict(model, eval_batch(train, SIZE)[:3], batch_size=2, patch=True)
    assert out.shape == (3, 5, 2, 2)
