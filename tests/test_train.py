"""Training: the loss falls on synthetic images; an interrupted run resumes to the same final weights."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from bagnet_lib.data.split import make_split
from bagnet_lib.data.tensors import eval_batch, load_split_tensors
from bagnet_lib.errors import UserError
from bagnet_lib.nets import precision as precision_mod
from bagnet_lib.nets import train as train_mod
from bagnet_lib.nets.metrics import cross_entropy
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.train import predict, train_model

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


_build = _model


@pytest.mark.slow
def _interrupt_in_epoch_2(monkeypatch, at_batch: int, train) -> None:
    """Run `train()` with a Ctrl-C raised at batch `at_batch` of the second epoch; then undo the patch."""
    real = train_mod.train_batches

    def dies_in_epoch_2(*args, **kw):
        for i, batch in enumerate(real(*args, **kw)):
            if kw.get("epoch", args[4] if len(args) > 4 else None) == 1 and i == at_batch:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(train_mod, "train_batches", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(train_mod, "train_batches", real)


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


@pytest.mark.parametrize("name,precision,extra", [
    ("bagnet33", "fp32", {}), ("bagnet33", "bf16", {}), ("resnet50", "bf16", {}),
    # the cpu profile's levers: validation on some epochs only, no weight decay on BatchNorm and biases
    ("resnet50", "bf16", {"val_every": 2, "norm_weight_decay": False, "weight_decay": 5e-4})])
def test_an_interrupted_run_resumes_to_identical_weights(data, tmp_path, monkeypatch, name, precision, extra):
    """In every precision (and channels-last for ResNet-50): same seed, same weights; resumed = uninterrupted."""
    train, val = data
    profile = _profile(epochs=3, precision=precision, channels_last=True, **extra)
    _model = lambda: _build(name)  # noqa: E731
    straight = _model()
    train_model(straight, train, val, profile, tmp_path / "a", "bag", seed=7, progress=False)

    _interrupt_in_epoch_2(monkeypatch, 2, lambda: train_model(_model(), train, val, profile, tmp_path / "b", "bag",
                                                            seed=7, progress=False))
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


def test_precision_resolves_to_what_the_device_can_do(monkeypatch):
    cpu = torch.device("cpu")
    assert precision_mod.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(precision_mod, "cpu_has_fast_bf16", lambda: True)
    assert precision_mod.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(precision_mod, "cpu_has_fast_bf16", lambda: False)  # emulated bf16 would be slower
    assert precision_mod.resolve_precision("bf16", cpu) == "fp32"
    with pytest.raises(UserError, match="Unknown precision 'fp16'"):
        precision_mod.resolve_precision("fp16", cpu)


def test_channels_last_where_requested_and_compile_where_it_pays():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for name in ("resnet50", "bagnet33"):  # BagNets too, since the shortcut rewrite (test_models.py)
        assert train_mod.use_channels_last(_model(name), cpu, True)
        assert not train_mod.use_channels_last(_model(name), cpu, False)
        assert train_mod.use_channels_last(_model(name), cuda, False)
    assert train_mod.use_compile(_model("bagnet33"), cpu, True)
    assert not train_mod.use_compile(_model("resnet50"), cpu, True)  # ~1.02x on this CPU (docstring)
    assert train_mod.use_compile(_model("resnet50"), cuda, True)
    assert not train_mod.use_compile(_model("bagnet33"), cpu, False)


def test_training_runs_channels_last_when_the_profile_asks(data, tmp_path):
    train, val = data
    for name, channels_last in (("bagnet33", True), ("resnet50", True), ("bagnet33", False)):
        model = _model(name)
        train_model(model, train, val, _profile(epochs=1, channels_last=channels_last, precision="bf16"),
                    tmp_path / f"{name}{channels_last}", name, progress=False)
        w = model.layer1[0].conv2.weight  # 3×3: its strides tell the layout (a 1×1 kernel's would not)
        assert w.is_contiguous(memory_format=torch.channels_last) == channels_last, name


@pytest.mark.slow
def test_a_compiled_run_is_reproducible_and_resumes_to_identical_weights(data, tmp_path, monkeypatch):
    """torch.compile'd BagNet step: same seed, same weights; killed in epoch 2 and resumed (compiling again), the
    same weights as the uninterrupted compiled run; and really compiled, not fallen back."""
    train, val = data
    profile = _profile(epochs=2, precision="bf16", channels_last=True, compile=True)
    runs = {}
    for run in ("a", "b"):
        model = _model()
        result = train_model(model, train, val, profile, tmp_path / run, "bag", seed=3, progress=False)
        assert result.compile_fallback is None and result.compile_s is not None
        runs[run] = model.state_dict()
    _interrupt_in_epoch_2(monkeypatch, 1, lambda: train_model(_model(), train, val, profile, tmp_path / "c", "bag",
                                                            seed=3, progress=False))
    resumed = _model()
    assert train_model(resumed, train, val, profile, tmp_path / "c", "bag", seed=3, progress=False).resumed_from_epoch == 1
    for k, a in runs["a"].items():
        assert torch.equal(a, runs["b"][k]), k
        assert torch.equal(a, resumed.state_dict()[k]), k


@pytest.mark.timeout(600)
def test_without_a_compiler_training_falls_back_to_eager_and_says_so_once(tmp_path, synthetic_root):
    """No C++ compiler (CXX=/bin/false, an empty inductor cache): one line says so, training runs eagerly and ends
    with exactly the weights of an eager run."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import torch
        from bagnet_lib.data.split import make_split
        from bagnet_lib.data.tensors import load_split_tensors
        from bagnet_lib.nets.models import build_model
        from bagnet_lib.nets.profiles import get_profile
        from bagnet_lib.nets.train import train_model
        root = {str(synthetic_root)!r}
        df = make_split(root, seed=0)
        classes = sorted(df["label"].unique())
        train, val = (load_split_tensors(root, df, s, classes, {SIZE}, progress=False) for s in ("train", "val"))
        states = []
        for compile in (True, False):
            torch.manual_seed(0)
            model = build_model("bagnet33", 5, width=0.125)
            profile = get_profile("smoke", image_size={SIZE}, width=0.125, epochs=2, batch_size=8, compile=compile)
            result = train_model(model, train, val, profile, {str(tmp_path)!r} + f"/{{compile}}", "bag", progress=False)
            assert (result.compile_fallback is not None) == compile and result.compile_s is None
            states.append(model.state_dict())
        assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
        print("ok")
    """)
    env = {**os.environ, "CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=540, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.stdout[-2000:], done.stderr[-3000:])
    said = [line for line in done.stdout.splitlines() if "torch.compile is not available here" in line]
    assert len(said) == 1, done.stdout


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_evaluation_path_computes_alike(data, precision):
    """Image logits (`predict`) and the mean of the cached patch logits agree: one precision for full and masked."""
    from bagnet_lib.blackout.sweep import cache_logits

    train, _ = data
    model = _model().eval()
    images = eval_batch(train, SIZE)[:12]
    logits = predict(model, images, batch_size=5, precision=precision)
    cache = cache_logits(model, images, train.labels[:12], batch_size=4, progress=False, precision=precision)
    torch.testing.assert_close(cache.patch_logits.mean(dim=(2, 3)), logits, rtol=1e-5, atol=1e-5)
    patch = predict(model, images, batch_size=5, patch=True, precision=precision)
    torch.testing.assert_close(patch, cache.patch_logits, rtol=0, atol=0)
    if precision == "bf16" and precision_mod.resolve_precision("bf16", torch.device("cpu")) == "bf16":
        fp32 = predict(model, images, batch_size=5)
        assert not torch.equal(fp32, logits)  # bf16 really ran …
        assert (fp32 - logits).norm() / fp32.norm() < 0.05  # … and stays close to fp32


def test_prefetch_keeps_the_order_and_hands_over_errors():
    from bagnet_lib.data.tensors import prefetch

    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise KeyError("in the producer")

    it = prefetch(broken())
    assert next(it) == 1
    with pytest.raises(KeyError, match="in the producer"):
        next(it)
    endless = prefetch(iter(int, 1))  # never ends: stopping early must not hang
    assert [next(endless) for _ in range(3)] == [0, 0, 0]
    endless.close()


def test_the_papers_last_partial_batch_is_trained_and_the_schedule_ends_on_time(data, tmp_path):
    from bagnet_lib.data.tensors import train_batches

    train, val = data
    assert len(train) % 8 != 0
    full = list(train_batches(train, SIZE, 8, 0, 0, drop_last=False))
    assert len(full) == -(-len(train) // 8) and sum(len(y) for _, y in full) == len(train)
    assert len(list(train_batches(train, SIZE, 8, 0, 0))) == len(train) // 8
    for drop_last in (True, False):  # the cosine schedule reaches 0 exactly at the last step either way
        result = train_model(_model(), train, val, _profile(epochs=2, drop_last=drop_last), tmp_path / str(drop_last),
                             "bag", progress=False)
        assert result.history["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-9)


def test_original_size_decoding_keeps_the_full_image(synthetic_root):
    df = make_split(synthetic_root, seed=0)
    classes = sorted(df["label"].unique())
    resized = load_split_tensors(synthetic_root, df, "val", classes, SIZE, progress=False)
    original = load_split_tensors(synthetic_root, df, "val", classes, SIZE, progress=False, original_size=True)
    assert min(resized.images[0].shape[-2:]) == 55  # ceil(48 · 256 / 224)
    assert tuple(original.images[0].shape[-2:]) == (64, 64)  # the synthetic images are 64 px


def test_an_unfinished_prefetch_does_not_abort_the_interpreter_at_exit():
    """A producer thread still inside torch at exit would abort Python ("terminate called …", status 134)."""
    import subprocess
    import sys

    code = ("import torch\nfrom bagnet_lib.data.tensors import prefetch\n"
            "def endless():\n    while True:\n        yield torch.randn(64, 3, 64, 64).sum()\n"
            "g = prefetch(endless())\nnext(g)\nprint('left unfinished')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "left unfinished" in done.stdout, (done.returncode, done.stderr[-500:])


def test_fp32_training_runs_with_tf32_off_in_forward_and_backward_and_restores_the_flags(data, tmp_path):
    """The `paper` profile's precision: TF32 off for the whole run (cuDNN's default is on), the flags back after."""
    train, val = data
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        model, seen = _model(), []
        model.layer4.register_forward_hook(lambda *a: seen.append(("forward", precision_mod.tf32_flags())))
        model.layer1.register_full_backward_hook(lambda *a: seen.append(("backward", precision_mod.tf32_flags())))
        train_model(model, train, val, _profile(epochs=1, precision="fp32", channels_last=False), tmp_path, "m",
                    progress=False)
        assert {kind for kind, _ in seen} == {"forward", "backward"}
        assert all(not any(flags.values()) for _, flags in seen)
        assert precision_mod.tf32_flags() == {"cudnn.allow_tf32": True, "cuda.matmul.allow_tf32": True}
        seen.clear()
        train_model(_model(), train, val, _profile(epochs=1, precision="bf16"), tmp_path / "b", "m", progress=False)
        assert precision_mod.tf32_flags() == {"cudnn.allow_tf32": True, "cuda.matmul.allow_tf32": True}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _sgd_step_by_hand(model, images, labels, profile, precision, channels_last):
    """One training step written out (what notebook 02 shows): forward, loss, backward, SGD's first step."""
    import torch.nn.functional as F

    from bagnet_lib.data.tensors import normalize

    x = normalize(images)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    with precision_mod.precision_scope(torch.device("cpu"), precision):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=profile.label_smoothing)
    loss.backward()
    with torch.no_grad():  # the first step: the momentum buffer is the gradient itself (with weight decay)
        for p in model.parameters():  # BatchNorm weights and biases decay only with norm_weight_decay
            decay = profile.weight_decay if p.dim() > 1 or profile.norm_weight_decay else 0.0
            p.add_(p.grad.add(p, alpha=decay), alpha=-profile.lr)
    return loss.detach()


@pytest.mark.parametrize("precision,channels_last,norm_weight_decay", [("fp32", False, True), ("bf16", True, True),
                                                                     ("bf16", True, False)])
def test_one_training_step_written_by_hand_is_the_librarys_step(data, precision, channels_last, norm_weight_decay):
    """`train_on_batch` with the optimiser `make_optimizer` builds is forward, label-smoothed cross-entropy in fp32,
    backward, and SGD's update w ← w − lr·(g + wd·w): bit for bit, weights and BatchNorm statistics alike."""
    import copy

    from bagnet_lib.data.tensors import train_batches

    train, _ = data
    profile = _profile(label_smoothing=0.1, weight_decay=5e-4, momentum=0.9, lr=0.05,
                       norm_weight_decay=norm_weight_decay)
    precision = precision_mod.resolve_precision(precision, torch.device("cpu"))
    images, labels = next(train_batches(train, SIZE, 4, seed=0, epoch=0))
    start = _model("resnet50")
    if channels_last:
        start.to(memory_format=torch.channels_last)
    hand, lib = copy.deepcopy(start), copy.deepcopy(start)
    hand_loss = _sgd_step_by_hand(hand, images, labels, profile, precision, channels_last)
    lib.train()
    lib_loss, _ = train_mod.train_on_batch(lib, train_mod.make_optimizer(lib, profile), images, labels,
                                           precision=precision, channels_last=channels_last,
                                           label_smoothing=profile.label_smoothing)
    assert torch.equal(hand_loss, lib_loss)
    moved = 0
    for (k, a), b, s in zip(hand.state_dict().items(), lib.state_dict().values(), start.state_dict().values()):
        assert torch.equal(a, b), k
        moved += not torch.equal(a, s)
    assert moved > len(start.state_dict()) // 2  # the step changed the weights (and the statistics)
    # the comparison sees the loss's ingredients: without label smoothing the hand-written loss differs
    plain = _sgd_step_by_hand(copy.deepcopy(start), images, labels, _profile(label_smoothing=0.0), precision,
                              channels_last)
    assert not torch.equal(plain, lib_loss)


def test_predict_as_trained_gives_the_validation_numbers_of_the_history(data, tmp_path):
    """The best checkpoint, loaded into a fresh network and scored with `predict_as_trained`, gives exactly the
    history's validation loss and accuracy of its epoch (notebook 02 asserts this for the course's network)."""
    from bagnet_lib.nets.metrics import accuracy

    train, val = data
    profile = _profile(epochs=2, precision="bf16", channels_last=True, eval_batch_size=5)
    result = train_model(_model("resnet50"), train, val, profile, tmp_path, "r50", progress=False)
    best = result.history.set_index("epoch").loc[result.best_epoch]
    fresh = train_mod.load_best(_model("resnet50"), result.best_checkpoint)
    logits = train_mod.predict_as_trained(fresh, eval_batch(val, SIZE), profile)
    assert cross_entropy(logits, val.labels) == best["val_loss"]
    assert accuracy(logits, val.labels) == best["val_acc"] == result.best_val_acc
    assert fresh.layer1[0].conv2.weight.is_contiguous(memory_format=torch.channels_last)
    if precision_mod.resolve_precision("bf16", torch.device("cpu")) == "bf16":  # the old demo's fp32 path differs
        assert cross_entropy(predict(fresh, eval_batch(val, SIZE)), val.labels) != best["val_loss"]


def test_validation_runs_on_the_epochs_the_profile_names_and_the_best_is_among_them(data, tmp_path, monkeypatch):
    """`val_every=2, val_last=1` over 5 epochs validates after epochs 2, 4 and 5 (the last always): one validation
    pass each, NaN in the history's other rows, the best checkpoint from a validated epoch."""
    train, val = data
    p = _profile(epochs=5, val_every=2, val_last=1)
    assert [e for e in range(1, 6) if p.validates(e)] == [2, 4, 5]
    assert all(_profile(epochs=5).validates(e) for e in range(1, 6))  # the default: every epoch
    calls = []
    real = train_mod.predict_as_trained
    monkeypatch.setattr(train_mod, "predict_as_trained", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = train_model(_model(), train, val, p, tmp_path, "bagnet33", progress=False)
    h = result.history
    assert len(calls) == 3
    assert h["val_acc"].isna().tolist() == [True, False, True, False, False]
    assert result.best_epoch in (2, 4, 5)
    assert result.best_val_acc == h["val_acc"].max()
    saved = pd.read_csv(tmp_path / "bagnet33_history.csv")
    assert saved["val_acc"].isna().tolist() == [True, False, True, False, False]
    # validation draws no random numbers and changes no weight: validating every epoch trains the same network
    every = _model()
    train_model(every, train, val, _profile(epochs=5), tmp_path / "every", "bagnet33", progress=False)
    sparse = _model()
    sparse.load_state_dict(torch.load(tmp_path / "bagnet33_last.pt", weights_only=True)["model"])
    for (k, a), b in zip(every.state_dict().items(), sparse.state_dict().values()):
        assert torch.equal(a, b), k


def test_without_norm_weight_decay_only_conv_and_linear_weights_decay(data):
    """`norm_weight_decay=False`: BatchNorm weights and biases get none (their group's weight_decay is 0); with the
    default, one group decays every parameter."""
    model = _model()
    n_params = len([q for q in model.parameters()])
    default = train_mod.make_optimizer(model, _profile(weight_decay=5e-4))
    assert len(default.param_groups) == 1 and default.param_groups[0]["weight_decay"] == 5e-4
    split = train_mod.make_optimizer(model, _profile(weight_decay=5e-4, norm_weight_decay=False))
    decayed, kept = split.param_groups
    assert decayed["weight_decay"] == 5e-4 and kept["weight_decay"] == 0.0
    assert len(decayed["params"]) + len(kept["params"]) == n_params
    assert all(q.dim() == 4 or q.dim() == 2 for q in decayed["params"])
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert any(q is bn.weight for q in kept["params"]) and any(q is bn.bias for q in kept["params"])
    # one step without gradient: SGD's decay alone moves the conv weights and leaves BatchNorm's scale where it was
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    w0, g0 = conv.weight.detach().clone(), bn.weight.detach().clone()
    with torch.no_grad():
        bn.weight.fill_(1.0)
        g0 = bn.weight.clone()
    split.step()
    assert not torch.equal(conv.weight, w0) and torch.equal(bn.weight, g0)
