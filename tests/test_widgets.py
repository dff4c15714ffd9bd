"""The blackout explorer (bagnet_lib.figures.widgets) on a hand-made logit cache whose answers are known."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bagnet_lib.blackout.masks import make_mask  # noqa: E402
from bagnet_lib.blackout.sweep import LogitCache  # noqa: E402
from bagnet_lib.figures.widgets import NO_PATCH_KEPT, PATTERNS, BlackoutExplorer  # noqa: E402

CLASSES = ["aster", "bluebell", "crocus"]  # A, B, C
H = W = 6


def _cache() -> LogitCache:
    """Four images, three classes, a 6×6 patch grid.

    0: class A (logit 2) on the left half, class B (logit 3, stronger) on the right half → predicts B;
       small noise breaks ties so top-k has a unique answer.
    1: the 18 cells nearest the centre say B (4), the 18 outer cells say A (2) → predicts B; the
       'border' mask at 0.5 (keeps the outer 18) flips it to A.
    2, 3: random logits.
    """
    g = torch.Generator().manual_seed(0)
    pl = torch.zeros(4, 3, H, W)
    pl[0, 0, :, :W // 2] = 2.0
    pl[0, 1, :, W // 2:] = 3.0
    pl[0] += 0.01 * torch.randn(3, H, W, generator=g)
    outer = make_mask("border", H, W, 0.5)
    pl[1, 0][outer] = 2.0
    pl[1, 1][~outer] = 4.0
    pl[2:] = torch.randn(2, 3, H, W, generator=g)
    return LogitCache(patch_logits=pl, labels=torch.tensor([1, 0, 2, 1]), features=torch.zeros(4, 8),
                      fc_weight=torch.zeros(3, 8), fc_bias=torch.zeros(3),
                      paths=[f"/data/flowers/test/img_{i}.jpg" for i in range(4)], classes=list(CLASSES))


@pytest.fixture(scope="module")
def cache() -> LogitCache:
    return _cache()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def explorer(cache, images) -> BlackoutExplorer:
    return BlackoutExplorer(cache, images)


@pytest.mark.parametrize("pattern,kind,frac,seed", [
    ("checkerboard", "checkerboard", 0.5, 0), ("raster", "raster", 0.3, 0), ("random", "random", 0.3, 3),
    ("random", "random", 0.7, 11), ("center", "center", 0.25, 0), ("border", "border", 0.5, 0),
    ("block", "block", 0.3, 2), ("top-k", "topk", 0.4, 0), ("bottom-k", "bottomk", 0.4, 0),
])
def test_keep_matches_make_mask(explorer, cache, pattern, kind, frac, seed):
    state = explorer.update(2, pattern, frac, seed, "mean")
    expected = make_mask(kind, H, W, frac, seed, patch_logits=cache.patch_logits[2:3]).reshape(H, W)
    assert state.keep.dtype == torch.bool and state.keep.shape == (H, W)
    assert torch.equal(state.keep, expected)
    assert state.kept_frac == pytest.approx(expected.float().mean().item())
    assert state.pattern == pattern and state.drop_frac == frac and state.seed == seed


def test_plain_kind_names_are_accepted(explorer):
    assert explorer.update(0, "topk", 0.5).pattern == "top-k"
    assert explorer.update(0, "bottomk", 0.5).pattern == "bottom-k"
    assert set(PATTERNS) == {"checkerboard", "raster", "random", "center", "border", "block", "top-k", "bottom-k"}


def test_probabilities(explorer, cache):
    for i in range(4):
        state = explorer.update(i, "random", 0.5, 7, "mean")
        assert state.probs_before.shape == state.probs_after.shape == (3,)
        assert float(state.probs_before.sum()) == pytest.approx(1.0, abs=1e-5)
        assert float(state.probs_after.sum()) == pytest.approx(1.0, abs=1e-5)
        plain = torch.softmax(cache.patch_logits[i].mean(dim=(1, 2)), dim=0)
        assert torch.allclose(state.probs_before, plain, atol=1e-6)
        kept = cache.patch_logits[i][:, state.keep].mean(dim=1)
        assert torch.allclose(state.probs_after, torch.softmax(kept, dim=0), atol=1e-6)
        assert state.pred_before == CLASSES[int(plain.argmax())]
        assert state.true_label == CLASSES[int(cache.labels[i])]


def test_known_flip_with_border(explorer):
    state = explorer.update(1, "border", 0.5, 0, "mean")
    assert state.pred_before == "bluebell" and state.pred_after == "aster"
    assert state.changed
    # only the outer A-patches (logits 2, 0, 0) are left
    assert torch.allclose(state.probs_after, torch.softmax(torch.tensor([2.0, 0.0, 0.0]), 0), atol=1e-6)
    assert state.kept_frac == 0.5
    # the same image keeps its prediction when the outer ring is dropped instead
    assert explorer.update(1, "center", 0.5, 0, "mean").pred_after == "bluebell"


def test_mean_vs_zero_same_prediction_different_probabilities(explorer):
    m = explorer.update(0, "checkerboard", 0.5, 0, "mean")
    z = explorer.update(0, "checkerboard", 0.5, 0, "zero")
    assert m.pred_after == z.pred_after
    assert not torch.allclose(m.probs_after, z.probs_after, atol=1e-3)
    # 'zero' shrinks the logits towards 0, so its distribution is flatter
    assert z.probs_after.max() < m.probs_after.max()
    assert torch.allclose(m.probs_before, z.probs_before, atol=1e-6)  # nothing dropped: identical


def test_topk_keeps_the_most_confident_patches_of_the_predicted_class(explorer, cache):
    state = explorer.update(0, "top-k", 0.5, 0, "mean")
    assert state.pred_before == "bluebell"
    right_half = torch.zeros(H, W, dtype=torch.bool)
    right_half[:, W // 2:] = True
    assert torch.equal(state.keep, right_half)  # B's evidence lives on the right
    ev = cache.patch_logits[0, 1]
    assert ev[state.keep].min() > ev[~state.keep].max()
    bottom = explorer.update(0, "bottom-k", 0.5, 0, "mean")
    assert torch.equal(bottom.keep, ~right_half)
    assert bottom.pred_after == "aster"


def test_text_names_both_predictions(explorer):
    state = explorer.update(1, "border", 0.5, 0, "mean")
    assert state.text.startswith("true: aster | all patches: bluebell ")
    assert "18/36 patches kept (border, mean): aster " in state.text
    assert "→" in state.text
    rnd = explorer.update(1, "random", 0.25, 4, "median")
    assert "(random seed 4, median)" in rnd.text and "27/36" in rnd.text


@pytest.mark.parametrize("kwargs,match", [
    ({"pattern": "stripes"}, "unknown pattern"),
    ({"pattern": ["random"]}, "unknown pattern"),
    ({"aggregation": "avg"}, "unknown aggregation"),
    ({"image_index": 4}, "out of range"),
    ({"image_index": -1}, "out of range"),
    ({"image_index": 1.5}, "image_index"),
    ({"drop_frac": 1.5}, r"\[0, 1\]"),
    ({"drop_frac": -0.1}, r"\[0, 1\]"),
    ({"drop_frac": math.nan}, r"\[0, 1\]"),
    ({"drop_frac": "half"}, "drop_frac"),
])
def test_invalid_inputs_raise_value_error(explorer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        explorer.update(**kwargs)


def test_invalid_construction(cache, images):
    with pytest.raises(ValueError, match="class names"):
        BlackoutExplorer(cache, images, classes=["a", "b"])
    with pytest.raises(ValueError, match="same test images"):
        BlackoutExplorer(cache, images[:3])
    with pytest.raises(ValueError, match="uint8"):
        BlackoutExplorer(cache, images.float())


@pytest.mark.parametrize("pattern", ["random", "center", "top-k", "bottom-k", "block"])
def test_dropping_everything_does_not_crash(explorer, tmp_path, pattern):
    state = explorer.update(3, pattern, 1.0, 0, "mean")
    assert state.kept_frac == 0.0 and not state.keep.any()
    assert NO_PATCH_KEPT in state.text
    assert torch.isnan(state.probs_after).all()
    assert float(state.probs_before.sum()) == pytest.approx(1.0, abs=1e-5)
    assert state.figure is not None and "none" in state.figure.get_suptitle()
    if pattern == "random":  # rendering is slow-ish: once is enough
        assert explorer.save(tmp_path / "empty.png").stat().st_size > 0


def test_figure_is_labelled(explorer):
    state = explorer.update(1, "border", 0.5, 0, "mean")
    fig = state.figure
    title = fig.get_suptitle()
    assert "bluebell" in title and "aster" in title  # prediction before and after
    ax_img, ax_map, ax_bar = fig.axes[:3]
    assert "18 of 36 patches kept" in ax_img.get_title()
    assert "bluebell" in ax_map.get_title()
    assert any(ax.get_ylabel() == "patch logit" for ax in fig.axes[3:])  # the colourbar
    assert ax_bar.get_xlabel() == "probability" and ax_bar.get_xlim() == (0.0, 1.0)
    assert [t.get_text() for t in ax_bar.get_legend().get_texts()] == ["all patches", "after blackout"]
    assert "before: bluebell" in ax_bar.get_title() and "after: aster" in ax_bar.get_title()


def test_save_writes_png(explorer, tmp_path):
    with pytest.raises(RuntimeError, match="update"):
        explorer.save(tmp_path / "nothing.png")
    explorer.update(0, "checkerboard")
    out = explorer.save(tmp_path / "deep" / "folder" / "explorer.png")
    assert out.exists() and out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert explorer.state._repr_png_()[:4] == b"\x89PNG"


def test_updates_do_not_leak_figures(explorer):
    plt.close("all")
    before = len(plt.get_fignums())
    for n in range(30):
        explorer.update(n % 4, ["checkerboard", "random", "top-k"][n % 3], (n % 10) / 10, n, "mean")
    assert len(plt.get_fignums()) - before <= 1


def test_widget_controls_drive_updates(cache, images):
    ipw = pytest.importorskip("ipywidgets")
    explorer = BlackoutExplorer(cache, images, max_images=3)
    box = explorer.widget()
    assert isinstance(box, ipw.VBox)
    c = explorer.controls
    assert isinstance(c["output"], ipw.Output)
    assert explorer.state.pattern == "checkerboard" and explorer.state.image_index == 0
    assert [label for label, _ in c["image"].options] == [
        "0: bluebell (img_0.jpg)", "1: aster (img_1.jpg)", "2: crocus (img_2.jpg)"]  # max_images=3
    slider = c["drop_frac"]
    assert (slider.min, slider.max, slider.step, slider.continuous_update) == (0.0, 0.95, 0.05, False)
    assert (c["seed"].min, c["seed"].max) == (0, 99)
    assert list(c["aggregation"].options) == ["mean", "zero", "median", "trimmed_mean", "max", "logsumexp",
                                              "clipped", "center_weighted"]
    assert slider.disabled  # checkerboard always drops half

    c["pattern"].value = "random"
    assert not slider.disabled
    c["seed"].value = 5
    c["image"].value = 2
    state = explorer.state
    assert (state.pattern, state.seed, state.image_index) == ("random", 5, 2)
    assert torch.equal(state.keep, make_mask("random", H, W, 0.5, 5))
    c["drop_frac"].value = 0.25
    c["aggregation"].value = "median"
    state = explorer.state
    assert state.drop_frac == 0.25 and state.aggregation == "median" and state.kept_frac == 27 / 36
    assert state.text in c["text"].value

    c["pattern"].value = "raster"
    assert slider.disabled and explorer.state.pattern == "raster"
    assert len(plt.get_fignums()) <= 1


def test_an_error_in_an_update_is_shown_in_the_explorer_and_not_swallowed(cache, images, monkeypatch):
    """JupyterLab shows a widget callback's exception nowhere, so the explorer must show it itself."""
    pytest.importorskip("ipywidgets")
    explorer = BlackoutExplorer(cache, images, max_images=3)
    explorer.widget()
    c = explorer.controls

    def broken(*args, **kwargs):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(explorer, "update", broken)
    with pytest.raises(RuntimeError, match="broken on purpose"):
        c["seed"].value = 7
    assert "error in the explorer:" in c["text"].value and "RuntimeError: broken on purpose" in c["text"].value


def test_a_state_prints_as_one_line_not_as_its_mask(explorer):
    state = explorer.update(1, "checkerboard", 0.5, 0, "mean")
    text = repr(state)
    assert "\n" not in text and state.text in text and "image 1" in text
    assert "tensor" not in text and "True" not in text  # the 6×6 keep-mask stays in state.keep
    assert state.n_kept == 18 and state.keep.shape == (H, W)
