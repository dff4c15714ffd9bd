"""A procedural stand-in for the flowers dataset, so the course runs anywhere without the real photos.

Introduced in notebook 01. Writes an ImageFolder tree `out/<class>/<class>_<index:05d>.jpg` with the
five flower class names. Each class has a *local* signature (petal colour, count and shape; centre
colour and texture) drawn at random positions, scales and rotations over cluttered backgrounds, so a
33x33 patch of a 128 px image carries class evidence -- the premise of a BagNet. Colours overlap on
purpose (dandelion/sunflower both yellow, rose/tulip both red-pink-purple, daisy's centre is yellow),
so shape, count and texture matter and mean colour alone is a weak classifier.

Every image depends only on (seed, class, index): it is rendered from
`numpy.random.default_rng([seed, class_idx, index])`, so generation order and `n_per_class` do not
change it, and the same seed gives byte-identical files.
"""
from __future__ import annotations

import colorsys
import io
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bagnet_lib.data.folder import FLOWER_CLASSES
from bagnet_lib.io import atomic_write, write_json

__all__ = ["GENERATOR_VERSION", "MARKER_NAME", "generate_synthetic_dataset", "render_image"]

# Bump when the rendering changes: an existing dataset with an older version is regenerated.
GENERATOR_VERSION = 1
MARKER_NAME = "synthetic.json"
JPEG_QUALITY = 90
_SS = 2  # internal supersampling factor (draw at 2x, box-downsample: cheap anti-aliasing)

Color = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------
# colours
# ----------------------------------------------------------------------------------------------

def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(r * 255 + 0.5), int(g * 255 + 0.5), int(b * 255 + 0.5)


def _shade(c: Color, f: float) -> Color:
    """Multiply a colour's brightness by `f` (f > 1 brightens towards white-ish, clipped)."""
    return tuple(int(min(255.0, max(0.0, x * f))) for x in c)  # type: ignore[return-value]


def _warm_hue(rng: np.random.Generator) -> float:
    """Red, pink, magenta or purple: shared by roses and tulips so hue does not separate them."""
    band = rng.integers(3)
    lo, hi = ((-0.03, 0.02), (0.89, 0.96), (0.78, 0.88))[band]
    return float(rng.uniform(lo, hi))


def _yellow(rng: np.random.Generator, h: tuple[float, float] = (0.11, 0.165)) -> Color:
    return _hsv(rng.uniform(*h), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0))


def _random_color(rng: np.random.Generator) -> Color:
    """A distractor colour, drawn from a palette that includes every class's colours."""
    k = rng.integers(9)
    if k == 0:
        return _hsv(rng.uniform(0.2, 0.42), rng.uniform(0.4, 0.9), rng.uniform(0.25, 0.8))  # green
    if k == 1:
        return _hsv(rng.uniform(0.1, 0.17), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))  # yellow
    if k == 2:
        return _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.12), rng.uniform(0.8, 1.0))  # white
    if k == 3:
        return _hsv(_warm_hue(rng), rng.uniform(0.45, 0.95), rng.uniform(0.5, 0.95))  # red/pink/purple
    if k == 4:
        return _hsv(rng.uniform(0.04, 0.1), rng.uniform(0.5, 0.9), rng.uniform(0.2, 0.5))  # brown
    if k == 5:
        return _hsv(rng.uniform(0.06, 0.1), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0))  # orange
    if k == 6:
        return _hsv(rng.uniform(0.55, 0.68), rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.95))  # blue
    if k == 7:
        return _hsv(0.0, 0.0, rng.uniform(0.1, 0.7))  # grey / black
    return _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0))  # anything


def _background_color(rng: np.random.Generator) -> Color:
    k = rng.integers(6)
    if k <= 2:
        return _hsv(rng.uniform(0.18, 0.42), rng.uniform(0.3, 0.85), rng.uniform(0.15, 0.7))  # foliage
    if k == 3:
        return _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.2, 0.7), rng.uniform(0.15, 0.6))  # soil
    if k == 4:
        return _hsv(rng.uniform(0.53, 0.62), rng.uniform(0.15, 0.6), rng.uniform(0.55, 0.95))  # sky
    return _hsv(0.0, 0.0, rng.uniform(0.1, 0.85))  # grey wall / shadow


# ----------------------------------------------------------------------------------------------
# geometry: shapes are built in a flower's local frame and mapped by an affine "pen"
# ----------------------------------------------------------------------------------------------

class _Pen:
    """Draws local-frame shapes through `x' = c + M x` (rotation, foreshortening, position)."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, cy: float, m: np.ndarray):
        self.draw, self.c, self.m = draw, np.array([cx, cy]), m
        self.scale = float(np.sqrt(abs(np.linalg.det(m))))

    def _pts(self, pts: np.ndarray) -> list[float]:
        return (pts @ self.m.T + self.c).ravel().tolist()

    def poly(self, pts: np.ndarray, fill: Color, outline: Color | None = None, width: int = 1) -> None:
        flat = self._pts(pts)
        self.draw.polygon(flat, fill=fill)
        if outline is not None:
            self.draw.line(flat + flat[:2], fill=outline, width=width)

    def line(self, pts: np.ndarray, fill: Color, width: int) -> None:
        self.draw.line(self._pts(pts), fill=fill, width=max(1, width))

    def dot(self, x: float, y: float, r: float, fill: Color) -> None:
        px, py = self.m @ np.array([x, y]) + self.c
        rr = max(0.8, r * self.scale)
        self.draw.ellipse((px - rr, py - rr, px + rr, py + rr), fill=fill)


def _affine(theta: float, squash: float, scale: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return scale * np.array([[c, -s], [s, c]]) @ np.diag([1.0, squash])


def _circle(r: float, n: int = 20) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


_T = np.linspace(0.0, 1.0, 9)
_PROFILES: dict[str, np.ndarray] = {
    # half-width along the petal (t = 0 at the base, 1 at the tip), max 1
    "ellipse": np.sqrt(np.clip(1 - (2 * _T - 1) ** 2, 0, 1)) * 0.9 + 0.1 * (1 - _T),
    "pointed": np.where(_T < 0.3, 0.45 + 0.55 * np.sin(np.pi / 2 * _T / 0.3), (1 - _T) / 0.7),
    "round": np.sqrt(np.clip(1 - (2 * _T ** 0.7 - 1) ** 2, 0, 1)) * 0.85 + 0.15,
    "ray": np.where(_T < 0.85, 1.0, (1 - _T) / 0.15),
}


def _petal(r0: float, r1: float, half_w: float, angle: float, shape: str) -> np.ndarray:
    """A petal polygon from radius r0 to r1 along direction `angle`, of the given profile."""
    prof = _PROFILES[shape] * half_w
    x = r0 + _T * (r1 - r0)
    side = np.concatenate([np.stack([x, prof], 1), np.stack([x[::-1], -prof[::-1]], 1)])
    c, s = np.cos(angle), np.sin(angle)
    return side @ np.array([[c, s], [-s, c]])


# ----------------------------------------------------------------------------------------------
# the five flowers (R = outer radius in internal pixels)
# ----------------------------------------------------------------------------------------------

def _daisy(pen: _Pen, rng: np.random.Generator, R: float) -> None:
    n = int(rng.integers(12, 17))
    rc = R * rng.uniform(0.17, 0.24)
    tint = _hsv(rng.uniform(0, 1), rng.uniform(0.0, 0.12) if rng.random() < 0.8 else rng.uniform(0.1, 0.22),
                rng.uniform(0.86, 1.0))
    edge = _shade(tint, rng.uniform(0.6, 0.8))
    a0 = rng.uniform(0, 2 * np.pi)
    hw = R * np.pi / n * rng.uniform(0.32, 0.45)
    for k in range(n):
        a = a0 + 2 * np.pi * k / n + rng.normal(0, 0.05)
        r1 = R * rng.uniform(0.85, 1.0)
        pen.poly(_petal(rc * 0.6, r1, hw, a, "ellipse"), _shade(tint, rng.uniform(0.9, 1.05)), edge, 1)
    centre = _yellow(rng, (0.12, 0.16))
    pen.poly(_circle(rc * 1.1), _shade(centre, 0.75))
    pen.poly(_circle(rc), centre)
    pen.poly(_circle(rc * 0.55, 14) + rc * 0.15, _shade(centre, 1.15))  # smooth highlight


def _dandelion(pen: _Pen, rng: np.random.Generator, R: float) -> None:
    base = _yellow(rng, (0.115, 0.16))
    rc = R * rng.uniform(0.1, 0.16)
    lw = max(1, int(round(pen.scale * R * 0.025)))
    for layer, (lo, hi, f) in enumerate(((0.85, 1.0, 0.85), (0.6, 0.85, 0.95), (0.35, 0.6, 1.05))):
        n = int(rng.integers(25, 41))
        a0 = rng.uniform(0, 2 * np.pi)
        for k in range(n):
            a = a0 + 2 * np.pi * k / n + rng.normal(0, 0.06)
            r1 = R * rng.uniform(lo, hi)
            col = _shade(base, f * rng.uniform(0.85, 1.1))
            if layer == 0:
                pen.poly(_petal(rc, r1, R * 0.028, a, "ray"), col)
            else:
                d = np.array([np.cos(a), np.sin(a)])
                pen.line(np.stack([d * rc, d * r1]), col, lw)
    centre = _hsv(rng.uniform(0.07, 0.11), rng.uniform(0.75, 1.0), rng.uniform(0.75, 0.95))
    pen.poly(_circle(rc, 14), centre)
    dark = _shade(centre, 0.6)
    for _ in range(int(rng.integers(6, 12))):
        rr, aa = rc * np.sqrt(rng.random()) * 0.85, rng.uniform(0, 2 * np.pi)
        pen.dot(rr * np.cos(aa), rr * np.sin(aa), max(rc * 0.12, 0.6), dark)


def _rose(pen: _Pen, rng: np.random.Generator, R: float) -> None:
    hue = _warm_hue(rng) if rng.random() < 0.9 else rng.uniform(0.11, 0.15)  # a few yellow roses
    sat, val = rng.uniform(0.5, 0.95), rng.uniform(0.6, 0.95)
    rings = int(rng.integers(3, 6))
    a0 = rng.uniform(0, 2 * np.pi)
    lw = max(1, int(round(pen.scale * R * 0.03)))
    for ring in range(rings):
        frac = 1.0 - ring / rings
        n = int(rng.integers(5, 8)) if ring < rings - 1 else 4
        r1 = R * frac * rng.uniform(0.92, 1.0)
        hw = r1 * np.pi / n * rng.uniform(0.7, 0.95)
        col = _hsv(hue, sat, val * (0.65 + 0.35 * frac))
        edge = _hsv(hue, min(1.0, sat + 0.1), val * (0.4 + 0.25 * frac))
        base_a = a0 + ring * 2.39996  # golden-angle offset per ring: a spiral arrangement
        for k in range(n):
            a = base_a + 2 * np.pi * k / n + rng.normal(0, 0.08)
            pen.poly(_petal(r1 * 0.15, r1, hw, a, "round"), col, edge, lw)
    core = R * rng.uniform(0.14, 0.2)
    pen.poly(_circle(core, 16), _hsv(hue, min(1.0, sat + 0.1), val * 0.35))
    swirl = _hsv(hue, sat * 0.8, val * 0.75)
    t = np.linspace(0, rng.uniform(2.5, 4.0) * np.pi, 24)
    rad = core * t / t[-1]
    ph = rng.uniform(0, 2 * np.pi)
    pen.line(np.stack([rad * np.cos(t + ph), rad * np.sin(t + ph)], 1), swirl, max(1, lw))


def _sunflower(pen: _Pen, rng: np.random.Generator, R: float) -> None:
    n = int(rng.integers(14, 23))
    rc = R * rng.uniform(0.38, 0.5)
    base = _yellow(rng, (0.085, 0.155))
    a0 = rng.uniform(0, 2 * np.pi)
    hw = rc * np.pi / n * rng.uniform(1.0, 1.3)
    for layer in (0, 1):  # back layer offset by half a step, slightly darker
        for k in range(n):
            a = a0 + 2 * np.pi * (k + 0.5 * (1 - layer)) / n + rng.normal(0, 0.05)
            r1 = R * rng.uniform(0.88, 1.0) * (0.95 if layer == 0 else 1.0)
            col = _shade(base, (0.8 if layer == 0 else 1.0) * rng.uniform(0.9, 1.08))
            pen.poly(_petal(rc * 0.85, r1, hw, a, "pointed"), col, _shade(base, 0.7), 1)
    brown = _hsv(rng.uniform(0.05, 0.09), rng.uniform(0.6, 0.9), rng.uniform(0.22, 0.42))
    pen.poly(_circle(rc, 24), _shade(brown, 0.7))
    pen.poly(_circle(rc * 0.88, 24), brown)
    # seeds on a Fibonacci (phyllotaxis) spiral: the dotted texture of a sunflower head
    n_seeds = int(min(160, max(20, (rc * pen.scale / 1.6) ** 2 * 0.9)))
    k = np.arange(n_seeds)
    rr = rc * 0.85 * np.sqrt((k + 0.5) / n_seeds)
    aa = k * 2.39996 + rng.uniform(0, 2 * np.pi)
    dr = rc * 0.85 * 0.5 / np.sqrt(n_seeds)
    light, dark = _shade(brown, 1.6), _shade(brown, 0.45)
    for i in range(n_seeds):
        pen.dot(rr[i] * np.cos(aa[i]), rr[i] * np.sin(aa[i]), dr, light if (i % 3 == 0) else dark)


def _tulip(pen: _Pen, rng: np.random.Generator, R: float) -> None:
    # local frame: -y is "up"; the pen's rotation is kept small for tulips (they stand upright)
    if rng.random() < 0.72:
        col = _hsv(_warm_hue(rng), rng.uniform(0.5, 0.95), rng.uniform(0.6, 0.95))
    else:
        col = _yellow(rng, (0.08, 0.15))
    green = _hsv(rng.uniform(0.22, 0.36), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.6))
    W, H = R * rng.uniform(0.75, 0.95), R * rng.uniform(1.1, 1.35)
    lw = max(1, int(round(pen.scale * R * 0.03)))
    base_y = H * 0.45
    stem_w = max(2, int(round(pen.scale * W * rng.uniform(0.12, 0.18))))
    bend = rng.uniform(-0.3, 0.3) * W
    pen.line(np.array([[0, base_y], [bend * 0.5, base_y + H * 0.8], [bend, base_y + H * 1.8]]), green, stem_w)
    if rng.random() < 0.6:  # a leaf along the stem
        side = rng.choice([-1.0, 1.0])
        leaf = _petal(0, H * rng.uniform(0.8, 1.2), W * 0.22, -np.pi / 2 + side * rng.uniform(0.25, 0.6), "pointed")
        pen.poly(leaf + np.array([bend * 0.6, base_y + H * 1.3]), _shade(green, 1.1))
    n = int(rng.integers(3, 6))
    edge = _shade(col, 0.55)
    xs = np.linspace(-W * 0.32, W * 0.32, n)
    order = list(range(0, n, 2)) + list(range(1, n, 2))  # back petals first, then front ones
    for j in order:
        front = j % 2 == 1
        hw = W * rng.uniform(0.3, 0.38)
        tilt = xs[j] / W * 0.5 + rng.normal(0, 0.05)
        pet = _petal(0, H, hw, -np.pi / 2 + tilt, "ellipse")
        # flatten the base into a cup: squash the lower part sideways
        pet[:, 0] *= np.where(pet[:, 1] > -H * 0.3, 0.8, 1.0)
        pet += np.array([xs[j] * 0.6, base_y])
        fill = _shade(col, rng.uniform(1.0, 1.1) if front else rng.uniform(0.7, 0.85))
        pen.poly(pet, fill, edge, lw)
        # a central vein on front petals
        if front:
            pen.line(np.array([[xs[j] * 0.6, base_y - H * 0.15], [xs[j] * 0.6 + tilt * H * 0.5, base_y - H * 0.75]]),
                     _shade(col, 0.8), max(1, lw // 2))


_FLOWERS: dict[str, Callable[[_Pen, np.random.Generator, float], None]] = {
    "daisy": _daisy, "dandelion": _dandelion, "rose": _rose, "sunflower": _sunflower, "tulip": _tulip,
}


# ----------------------------------------------------------------------------------------------
# scene
# ----------------------------------------------------------------------------------------------

def _background(rng: np.random.Generator, S: int) -> Image.Image:
    """A two-colour gradient in a random direction plus low-frequency colour noise."""
    c1 = np.array(_background_color(rng), np.float32)
    c2 = np.array(_background_color(rng) if rng.random() < 0.6 else _shade(tuple(c1.astype(int)), rng.uniform(0.5, 1.5)),
                  np.float32)
    a = rng.uniform(0, 2 * np.pi)
    g = np.linspace(-1, 1, S, dtype=np.float32)
    t = (np.cos(a) * g[None, :] + np.sin(a) * g[:, None]) * 0.5 + 0.5
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    k = int(rng.integers(3, 9))
    noise = rng.normal(0, rng.uniform(8, 35), (k, k, 3)).astype(np.float32)
    noise_img = Image.fromarray(np.clip(noise + 128, 0, 255).astype(np.uint8)).resize((S, S), Image.BILINEAR)
    img += np.asarray(noise_img, np.float32) - 128
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, S: int, amount: float) -> None:
    """Grass strokes, leaves, distractor blobs and lines (in every class's colours)."""
    # grass / stems
    for _ in range(int(rng.integers(0, 30) * amount)):
        x0, y0 = rng.uniform(-0.1, 1.1) * S, rng.uniform(0.3, 1.1) * S
        ang = -np.pi / 2 + rng.normal(0, 0.35)
        ln = rng.uniform(0.1, 0.5) * S
        g = _hsv(rng.uniform(0.18, 0.4), rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.75))
        draw.line((x0, y0, x0 + ln * np.cos(ang), y0 + ln * np.sin(ang)), fill=g,
                  width=max(1, int(rng.uniform(0.004, 0.015) * S)))
    # leaves
    ident = np.eye(2)
    for _ in range(int(rng.integers(0, 7) * amount)):
        pen = _Pen(draw, rng.uniform(0, S), rng.uniform(0, S), ident)
        g = _hsv(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.7))
        pen.poly(_petal(0, rng.uniform(0.1, 0.3) * S, rng.uniform(0.02, 0.06) * S, rng.uniform(0, 2 * np.pi),
                        "pointed"), g, _shade(g, 0.7), 1)
    # blobs
    for _ in range(int(rng.integers(1, 8) * amount)):
        x, y = rng.uniform(0, S), rng.uniform(0, S)
        rx, ry = rng.uniform(0.015, 0.09) * S, rng.uniform(0.015, 0.09) * S
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=_random_color(rng))
    # lines / polylines
    for _ in range(int(rng.integers(0, 5) * amount)):
        pts = rng.uniform(-0.1, 1.1, (int(rng.integers(2, 4)), 2)) * S
        draw.line(pts.ravel().tolist(), fill=_random_color(rng), width=max(1, int(rng.uniform(0.004, 0.02) * S)))


def _post(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera-ish degradations: colour jitter, occasional blur, sensor noise."""
    if rng.random() < 0.35:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.1) * img.width / 128))
    a = np.asarray(img, np.float32)
    grey = a.mean(axis=2, keepdims=True)
    a = grey + (a - grey) * rng.uniform(0.7, 1.25)  # saturation
    a = a * rng.uniform(0.9, 1.1, 3).astype(np.float32)  # white balance
    mean = a.mean()
    a = (a - mean) * rng.uniform(0.8, 1.2) + mean * rng.uniform(0.8, 1.15)  # contrast, brightness
    sigma = rng.uniform(0, 7)
    if sigma > 0.5:
        a += rng.normal(0, sigma, a.shape).astype(np.float32)
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))


def render_image(class_name: str, rng: np.random.Generator, image_size: int = 128) -> Image.Image:
    """Render one RGB image of `class_name`: 1-3 flowers of that class over a cluttered scene.

    All randomness comes from `rng`, so the image is a pure function of the generator's state.
    Geometry is expressed as fractions of `image_size`, so any size works (64, 96, 128, 224, ...).
    """
    if class_name not in _FLOWERS:
        raise ValueError(f"unknown class {class_name!r}; expected one of {', '.join(FLOWER_CLASSES)}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    S = image_size * _SS
    img = _background(rng, S)
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, S, amount=1.0)
    draw_flower = _FLOWERS[class_name]
    n_flowers = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    for i in range(n_flowers):
        R = S * rng.uniform(0.2, 0.42) * (1.0 if i == 0 else rng.uniform(0.6, 1.0)) / (1 + 0.15 * (n_flowers - 1))
        if i == 0:  # the first flower is mostly in frame; later ones may hang over the edge
            cx, cy = rng.uniform(0.25, 0.75, 2) * S
        else:
            cx, cy = rng.uniform(-0.05, 1.05, 2) * S
        if class_name == "tulip":
            m = _affine(rng.normal(0, 0.3), 1.0, 1.0)
        else:
            m = _affine(rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.0), 1.0)
        draw_flower(_Pen(draw, cx, cy, m), rng, R)
    if rng.random() < 0.5:  # a little foreground clutter in front of the flowers
        _clutter(draw, rng, S, amount=0.3)
    if rng.random() < 0.25:  # occlusion: a leaf or a random-coloured patch over part of the scene
        x, y = rng.uniform(0, S, 2)
        w, h = rng.uniform(0.1, 0.3, 2) * S
        if rng.random() < 0.5:
            draw.rectangle((x - w / 2, y - h / 2, x + w / 2, y + h / 2), fill=_random_color(rng))
        else:
            g = _hsv(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.6))
            _Pen(draw, x, y, np.eye(2)).poly(_petal(-w, w, h * 0.4, rng.uniform(0, np.pi), "pointed"), g)
    img = img.reduce(_SS) if _SS > 1 else img
    return _post(img, rng)


# ----------------------------------------------------------------------------------------------
# dataset on disk
# ----------------------------------------------------------------------------------------------

def _file_name(class_name: str, index: int) -> str:
    return f"{class_name}_{index:05d}.jpg"


def _params(n_per_class: int, image_size: int, seed: int) -> dict:
    return {"generator": "bagnet_lib.data.synthetic", "version": GENERATOR_VERSION, "classes": list(FLOWER_CLASSES),
            "n_per_class": n_per_class, "image_size": image_size, "seed": seed, "jpeg_quality": JPEG_QUALITY}


def _is_complete(root: Path, params: dict) -> bool:
    """True when `root` holds a marker with exactly these parameters and every expected file."""
    try:
        marker = json.loads((root / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or {k: marker.get(k) for k in params} != params:
        return False
    if marker.get("n_files") != params["n_per_class"] * len(FLOWER_CLASSES):
        return False
    for c in FLOWER_CLASSES:
        try:
            names = set(os.listdir(root / c))
        except OSError:
            return False
        if any(_file_name(c, i) not in names for i in range(params["n_per_class"])):
            return False
    return True


def generate_synthetic_dataset(out: str | Path, n_per_class: int = 240, image_size: int = 128, seed: int = 0,
                               progress: bool = True) -> Path:
    """Write the synthetic flowers dataset to `out/<class>/<class>_<index:05d>.jpg`; return `out`.

    Idempotent: if `out/synthetic.json` says a complete dataset with the same parameters is already
    there, nothing is written. Otherwise the files are (re)written, stale files of *our* naming pattern
    beyond `n_per_class` are removed (nothing else is touched), and the marker is written last, so an
    interrupted run is never mistaken for a complete one.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    root = Path(out)
    params = _params(int(n_per_class), int(image_size), int(seed))
    if _is_complete(root, params):
        return root
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER_NAME).unlink(missing_ok=True)

    from tqdm.auto import tqdm

    bar = tqdm(total=n_per_class * len(FLOWER_CLASSES), desc="synthetic flowers", unit="img", disable=not progress)
    try:
        for class_idx, c in enumerate(FLOWER_CLASSES):
            cdir = root / c
            cdir.mkdir(exist_ok=True)
            for i in range(n_per_class):
                rng = np.random.default_rng([int(seed), class_idx, i])
                buf = io.BytesIO()
                render_image(c, rng, image_size).save(buf, format="JPEG", quality=JPEG_QUALITY)
                data = buf.getvalue()
                atomic_write(cdir / _file_name(c, i), lambda p, d=data: p.write_bytes(d))
                bar.update(1)
            pattern = re.compile(rf"^{re.escape(c)}_(\d{{5,}})\.jpg$")
            for name in os.listdir(cdir):  # leftovers of an earlier, larger run with our naming
                m = pattern.match(name)
                if m and int(m.group(1)) >= n_per_class:
                    (cdir / name).unlink()
    finally:
        bar.close()
    write_json(root / MARKER_NAME, {**params, "n_files": n_per_class * len(FLOWER_CLASSES)})
    return root
