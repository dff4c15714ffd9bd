"""Evidence figures: files written, panels present, overlays placed over their windows' centres."""
from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from bagnet_lib.figures.evidence import evidence_extent, plot_gradcam_grid, plot_patch_evidence, plot_receptive_field
from bagnet_lib.nets.models import PatchGeometry

G33 = PatchGeometry(size=33, stride=8)
CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


def _images(n: int, h: int = 64, w: int = 72) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)


def _image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


def _png_ok(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _colorbar_labels(fig: Figure) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if not ax.images and ax.get_ylabel()]


@pytest.mark.parametrize("grid", [(24, 24), (5, 6), (1, 1)])
def test_evidence_extent_centres_cells_on_window_centres(grid):
    h, w = grid
    left, right, bottom, top = evidence_extent(G33, grid)
    cell_w, cell_h = (right - left) / w, (bottom - top) / h
    assert cell_w == cell_h == 8  # stride-sized squares, image rows grow downwards (origin="upper")
    assert left + cell_w / 2 == 16 and top + cell_h / 2 == 16  # cell (0, 0) over pixel 16 = centre of 0…32
    assert right - cell_w / 2 == 8 * (w - 1) + 16 and bottom - cell_h / 2 == 8 * (h - 1) + 16
    rows, cols = G33.window(h - 1, w - 1)
    assert (rows.start + rows.stop - 1) / 2 == 8 * (h - 1) + 16  # the window's own centre agrees


def test_receptive_field_figure(tmp_path):
    img = _images(1, 96, 112)[0]
    out = tmp_path / "nested" / "dir" / "rf.png"  # parent folders are created
    fig = plot_receptive_field(img, G33, out=out)
    assert isinstance(fig, Figure) and _png_ok(out)
    assert len(_image_axes(fig)) == 1
    ax = _image_axes(fig)[0]
    gh, gw = G33.grid_size(96, 112)  # 8 × 10
    windows = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert len(windows) == 1
    win = windows[0]
    assert win.get_width() == 33 and win.get_height() == 33  # 33 px: pixels 8j … 8j + 32, edges at ±0.5
    assert win.get_xy() == (8 * (gw // 2) - 0.5, 8 * (gh // 2) - 0.5)  # the middle cell by default
    assert ax.collections[0].get_offsets().shape == (gh * gw, 2)  # one dot per logit
    text = " ".join(t.get_text() for t in ax.texts)
    assert "33×33" in text and "8 px" in text and f"{gh}×{gw}" in text
    assert ax.get_title() and ax.get_xlabel() == "x (px)" and ax.get_legend() is not None

    fig = plot_receptive_field(img, G33, cell=(0, gw - 1), title="corner")
    win = next(p for p in _image_axes(fig)[0].patches if not p.get_fill())
    assert win.get_xy() == (8 * (gw - 1) - 0.5, -0.5) and _image_axes(fig)[0].get_title() == "corner"
    with pytest.raises(ValueError, match="outside"):
        plot_receptive_field(img, G33, cell=(gh, 0))


@pytest.mark.parametrize("with_gradcam", [False, True])
def test_patch_evidence_figure(tmp_path, with_gradcam):
    torch.manual_seed(0)
    images = _images(2)
    grid = G33.grid_size(64, 72)
    logits = torch.randn(2, 5, *grid)
    labels = torch.tensor([1, 3])
    cams = torch.rand(2, 2, 3) if with_gradcam else None
    out = tmp_path / "pe.png"
    fig = plot_patch_evidence(images, logits, labels, CLASSES, G33, out=out, gradcams=cams)
    assert isinstance(fig, Figure) and _png_ok(out)
    ncols = 4 if with_gradcam else 3
    axes = _image_axes(fig)
    assert len(axes) == 2 * ncols
    pred0 = CLASSES[int(logits[0].mean(dim=(1, 2)).argmax())]
    assert f"true: {CLASSES[1]}" in axes[0].get_title() and f"predicted: {pred0}" in axes[0].get_title()
    # evidence panels: image + overlay placed by evidence_extent, symmetric limits shared in the row
    ev = [ax for ax in axes if len(ax.images) == 2][:2]
    lims = {ax.images[1].get_clim() for ax in ev}
    assert len(lims) == 1 and (lambda c: c[0] == -c[1])(lims.pop())
    for ax in ev:
        assert tuple(ax.images[1].get_extent()) == pytest.approx(evidence_extent(G33, grid))
    labels_ = _colorbar_labels(fig)
    assert labels_.count("patch logit (class evidence)") == 2
    if with_gradcam:
        assert any("Grad-CAM" in lab for lab in labels_)
        assert any(ax.get_title() == "ResNet-50 Grad-CAM" for ax in axes)
    with pytest.raises(ValueError, match="grid"):
        plot_patch_evidence(images, logits[..., :-1], labels, CLASSES, G33)


def test_gradcam_grid_figure(tmp_path):
    images = _images(5)
    cams = torch.rand(5, 3, 3)
    labels, preds = torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, 2, 2, 3, 1])
    out = tmp_path / "gc.png"
    fig = plot_gradcam_grid(images, cams, labels, preds, CLASSES, out=out, title="ResNet-50 Grad-CAM")
    assert isinstance(fig, Figure) and _png_ok(out)
    axes = _image_axes(fig)
    assert len(axes) == 10  # five (image, image + heat map) pairs
    assert axes[2].get_title() == "true dandelion / predicted rose"
    assert any("Grad-CAM" in lab for lab in _colorbar_labels(fig))
    # BagNet cams drawn as cells over their windows' centres
    bag = plot_gradcam_grid(images[:2], torch.rand(2, *G33.grid_size(64, 72)), labels[:2], preds[:2], CLASSES,
                            geometry=G33)
    assert len(_image_axes(bag)) == 4
    assert tuple(_image_axes(bag)[1].images[1].get_extent()) == pytest.approx(evidence_extent(G33, G33.grid_size(64, 72)))


def test_no_images(tmp_path):
    out = tmp_path / "empty" / "gc.png"
    fig = plot_gradcam_grid(_images(0), torch.zeros(0, 3, 3), torch.zeros(0), torch.zeros(0), CLASSES, out=out)
    assert isinstance(fig, Figure) and out.is_file() and out.stat().st_size > 0
    assert len(_image_axes(fig)) == 0
    assert any("no images to show" in t.get_text() for ax in fig.axes for t in ax.texts)
    fig = plot_patch_evidence(_images(0), torch.zeros(0, 5, 5, 6), torch.zeros(0), CLASSES, G33)
    assert len(_image_axes(fig)) == 0
