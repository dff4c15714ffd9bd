"""Compiled evaluation (`nets.compiled.compiled_evaluation`): the same predictions as eager within a stated bound,
eager again after the block, eager where compilation fails."""
from __future__ import annotations

import pytest
import torch

from bagnet_lib.data.split import make_split
from bagnet_lib.data.tensors import eval_batch, load_split_tensors
from bagnet_lib.nets import compiled as compiled_mod
from bagnet_lib.nets.compiled import compiled_evaluation, evaluation_backbone
from bagnet_lib.nets.metrics import accuracy
from bagnet_lib.nets.models import build_model
from bagnet_lib.nets.profiles import get_profile
from bagnet_lib.nets.train import predict, train_model

SIZE = 48
# The bound this project states for compiled against eager evaluation: the largest logit difference, relative to
# the largest eager logit. bf16 rounds every intermediate to 8 bits of mantissa (2^-8 ≈ 0.4 %), and inductor fuses
# and orders the operations otherwise than eager, so a few roundings differ along the network; fp32 differs only
# in summation order.
BOUND = {"bf16": 0.05, "fp32": 1e-4}


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    """A BagNet-33 (width 0.125) trained for 2 epochs on the synthetic images: real BatchNorm statistics."""
    df = make_split(synthetic_root, seed=0)
    classes = sorted(df["label"].unique())
    train, val = (load_split_tensors(synthetic_root, df, s, classes, SIZE, progress=False) for s in ("train", "val"))
    torch.manual_seed(0)
    model = build_model("bagnet33", 5, width=0.125)
    p = get_profile("smoke", image_size=SIZE, epochs=2, batch_size=8, lr=0.05, channels_last=False)
    train_model(model, train, val, p, tmp_path_factory.mktemp("train"), "bagnet33", progress=False)
    return model.eval(), eval_batch(val, SIZE), val.labels


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_compiled_evaluation_gives_the_eager_accuracy_and_logits_within_the_bound(trained, precision):
    model, images, labels = trained
    eager = predict(model, images, batch_size=16, precision=precision)
    with compiled_evaluation(model):
        assert evaluation_backbone(model) is not None
        compiled = predict(model, images, batch_size=16, precision=precision)  # a partial last batch too
        assert evaluation_backbone(model).fallback is None  # it really compiled
    assert evaluation_backbone(model) is None
    assert accuracy(compiled, labels) == accuracy(eager, labels)
    assert torch.equal(compiled.argmax(1), eager.argmax(1))
    assert (compiled - eager).abs().max() <= BOUND[precision] * eager.abs().max()
    assert torch.equal(predict(model, images, batch_size=16, precision=precision), eager)  # eager after the block


def test_where_compilation_fails_evaluation_runs_eagerly_and_says_so(trained, capsys):
    model, images, _ = trained
    eager = predict(model, images, batch_size=16, precision="fp32")
    compiled_mod._COMPILED.pop(model, None)  # a fresh compilation, as in a new process
    with compiled_evaluation(model, verbose=True):
        backbone = evaluation_backbone(model)

        def no_compiler(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        object.__setattr__(backbone, "_compiled", no_compiler)  # shadows the registered compiled module
        out = predict(model, images, batch_size=16, precision="fp32")
        assert backbone.fallback == "RuntimeError: no C++ compiler found"
    compiled_mod._COMPILED.pop(model, None)  # the module's other tests compile for real
    assert torch.equal(out, eager)
    assert capsys.readouterr().out.count("torch.compile is not available here") == 1


def test_a_disabled_block_and_passes_with_gradients_run_eagerly(trained):
    model, images, _ = trained
    with compiled_evaluation(model, enabled=False):
        assert evaluation_backbone(model) is None
    with compiled_evaluation(model):
        backbone = evaluation_backbone(model)
        from bagnet_lib.nets.precision import features_fp32

        calls = []
        object.__setattr__(backbone, "forward", lambda *a, **k: calls.append(1) or torch.zeros(1))
        with torch.enable_grad():  # adaptation's fine-tuning, were it ever inside the block
            features_fp32(model, images[:2].float(), "fp32")
        assert calls == []  # the compiled backbone was not called
        with torch.no_grad():
            features_fp32(model, images[:2].float(), "fp32")
        assert calls == [1]  # and is, without gradients
    compiled_mod._COMPILED.pop(model, None)
    assert compiled_mod.evaluation_backbone(model) is None


@pytest.mark.slow
def test_bench_evaluation_quick_measures_both_ways_and_says_where_it_pays():
    from bagnet_lib.bench import evaluation as bench_evaluation

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # timings are not asserted; see tests/test_bench_sweep_train.py's `one_thread`
    try:
        r = bench_evaluation.run(quick=True)
    finally:
        torch.set_num_threads(old)
    assert set(r["models"]) == {"resnet50", "bagnet33"} and r["pixel_passes"] == 3 * get_profile("cpu").pixel_seeds
    for m in r["models"].values():
        assert m["eager_images_per_s"] > 0 and m["compiled_images_per_s"] > 0 and m["compile_s"] >= 0
        assert m["speedup"] == pytest.approx(m["compiled_images_per_s"] / m["eager_images_per_s"])
        assert m["repeatable"]  # each way gives the same logits every pass
        # random weights: the bound is tested on a trained network above; here the fields agree
        assert m["relative_logit_diff"] == pytest.approx(m["max_abs_logit_diff"] / m["max_abs_logit"])
        assert m["pays_in_course"] == (m["break_even_images"] is not None and m["course_images"] > m["break_even_images"])
    table = bench_evaluation.format_table(r)
    assert "| bagnet33 |" in table and "break-even" in table
