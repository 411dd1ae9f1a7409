"""Procedural street scenes written in the real Cityscapes layout.

Every scene is a list of labelled polygons drawn back to front (sky, buildings, trees, ground,
road, poles, cars, people). The same polygons give the annotation JSON, the label images and the
picture itself, so labels and pixels agree exactly, and `cityscapesscripts`' own rasteriser
(``json2labelImg``) reproduces the written ``labelIds``/``labelTrainIds`` from the JSON.

The picture is not a flat colouring of the labels: each class has its own colour family drawn
per object, textures (windows, paving tiles, foliage blotches, fence slats, lane markings, sky
gradient), smooth shading, per-pixel noise and global illumination changes, and objects occlude
each other. A model therefore has to learn shapes, textures and context, yet the task is easy
enough to learn in minutes on a CPU.

Output layout (``root`` is e.g. ``$ATROUS_DATASETS/synthetic``)::

    root/leftImg8bit/<split>/<city>/<city>_<seq>_000019_leftImg8bit.png
    root/gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_polygons.json
    root/gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_labelIds.png
    root/gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_labelTrainIds.png
    root/gtFine/<split>/<city>/<city>_<seq>_000019_gtFine_instanceIds.png

Each image is drawn from its own random generator seeded by ``(seed, split, index)``, so the
output does not depend on the number of worker processes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import name2label
from PIL import Image, ImageDraw

__all__ = [
    "CITIES",
    "Scene",
    "Shape",
    "generate_dataset",
    "generate_scene",
    "render_scene",
]

# Like Cityscapes: several cities in train, a different one in val. City names have no "_"
# because cityscapesscripts splits file names on it.
CITIES: dict[str, tuple[str, ...]] = {
    "train": ("northbrook", "eastwick"),
    "val": ("lindenfeld",),
}
_SPLIT_CODES = {"train": 0, "val": 1}
MARKER_NAME = "synthetic_dataset.json"

# Texture ("pattern") types: how a shape blends its two colours per pixel.
_FLAT, _WINDOWS, _TILES, _SLATS, _BLOTCH, _GRADIENT, _HLINES = range(7)


@dataclass
class Shape:
    """One polygon of a scene.

    Attributes:
        label: Cityscapes label name (a key of ``cityscapesscripts.helpers.labels.name2label``).
        polygon: (K, 2) int array of x, y vertices in pixels.
        color: base RGB colour (0-255 floats).
        color2: second colour of the texture.
        pattern: texture type (one of the module's ``_FLAT``, ``_WINDOWS``, ...).
        params: texture parameters (period x, period y, duty x, duty y, offset x, offset y).
        noise: amplitude of per-pixel noise.
        shade: amplitude of low-frequency shading.
        instance: instance number within its class (-1: not an instance).
    """

    label: str
    polygon: np.ndarray
    color: tuple[float, float, float]
    color2: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pattern: int = _FLAT
    params: tuple[float, float, float, float, float, float] = (1, 1, 0, 0, 0, 0)
    noise: float = 6.0
    shade: float = 0.08
    instance: int = -1


@dataclass
class Scene:
    height: int
    width: int
    shapes: list[Shape] = field(default_factory=list)
    gain: float = 1.0
    bias: float = 0.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------
# Scene layout
# ------------------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, base: Sequence[float], amount: float) -> tuple:
    return tuple(float(np.clip(c + rng.uniform(-amount, amount), 0, 255)) for c in base)


def _poly(points: Sequence[Sequence[float]]) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64)).astype(np.int64)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 14, rng=None, rough=0.0):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 1.0 if rng is None else 1.0 + rough * rng.uniform(-1, 1, size=n)
    return _poly(np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)], axis=1))


class _Builder:
    """Accumulates shapes and keeps per-class instance counters."""

    def __init__(self) -> None:
        self.shapes: list[Shape] = []
        self._instances: dict[str, int] = {}

    def add(self, label: str, polygon, color, **kw) -> None:
        self.shapes.append(Shape(label=label, polygon=_poly(polygon), color=color, **kw))

    def new_instance(self, label: str) -> int:
        k = self._instances.get(label, 0)
        self._instances[label] = k + 1
        return k


def _add_buildings(b: _Builder, rng, H, W, horizon) -> None:
    palettes = [(120, 120, 125), (165, 150, 125), (140, 90, 70), (190, 185, 170), (95, 100, 110)]
    n = int(rng.integers(3, 9))
    for _ in range(n):
        x0 = rng.uniform(-0.1, 0.95) * W
        bw = rng.uniform(0.12, 0.35) * W
        top = horizon - rng.uniform(0.1, 0.42) * H
        bottom = horizon + rng.uniform(0.0, 0.04) * H
        color = _jitter(rng, palettes[int(rng.integers(len(palettes)))], 18)
        window = _jitter(rng, (50, 60, 75) if rng.random() < 0.7 else (150, 170, 185), 15)
        px = rng.uniform(0.025, 0.05) * W
        py = rng.uniform(0.04, 0.07) * H
        params = (px, py, px * rng.uniform(0.35, 0.6), py * rng.uniform(0.35, 0.6), x0, top)
        if rng.random() < 0.3:  # gabled roof
            poly = [(x0, bottom), (x0, top), (x0 + bw / 2, top - 0.06 * H), (x0 + bw, top),
                    (x0 + bw, bottom)]  # fmt: skip
        else:
            poly = [(x0, bottom), (x0, top), (x0 + bw, top), (x0 + bw, bottom)]
        b.add("building", poly, color, color2=window, pattern=_WINDOWS, params=params,
              noise=5.0, shade=0.1)  # fmt: skip
    for _ in range(int(rng.integers(0, 3))):
        x0 = rng.uniform(-0.1, 0.9) * W
        ww = rng.uniform(0.1, 0.3) * W
        top = horizon - rng.uniform(0.03, 0.08) * H
        bottom = horizon + rng.uniform(0.01, 0.05) * H
        if rng.random() < 0.5:
            c = _jitter(rng, (160, 158, 150), 15)
            b.add("wall", [(x0, bottom), (x0, top), (x0 + ww, top), (x0 + ww, bottom)], c,
                  color2=tuple(x * 0.8 for x in c), pattern=_HLINES,
                  params=(1, rng.uniform(0.015, 0.03) * H, 1, 2, 0, top), noise=4.0)  # fmt: skip
        else:
            c = _jitter(rng, (120, 95, 70), 20)
            slats = (rng.uniform(6, 14), 1, rng.uniform(2, 5), 0, x0, 0)
            b.add("fence", [(x0, bottom), (x0, top), (x0 + ww, top), (x0 + ww, bottom)],
                  _jitter(rng, (60, 70, 60), 15), color2=c, pattern=_SLATS, params=slats,
                  noise=4.0)  # fmt: skip


def _add_trees(b: _Builder, rng, H, W, horizon) -> None:
    for _ in range(int(rng.integers(0, 5))):
        cx = rng.uniform(0, 1) * W
        base = horizon + rng.uniform(0.0, 0.12) * H
        s = 0.5 + (base - horizon) / (0.12 * H + 1e-6)
        rx = rng.uniform(0.04, 0.09) * W * s
        ry = rng.uniform(0.07, 0.13) * H * s
        trunk_h = ry * 1.3
        green = _jitter(rng, (60, 110, 40), 20)
        dark = tuple(c * rng.uniform(0.5, 0.7) for c in green)
        blotch = (0, 0, rng.uniform(0.4, 0.6), 0, 0, 0)
        tw = max(2.0, rx * 0.15)
        top = base - trunk_h
        trunk = [(cx - tw, base), (cx - tw, top), (cx + tw, top), (cx + tw, base)]
        b.add("vegetation", trunk, _jitter(rng, (90, 70, 50), 10), noise=5.0)
        crown = _ellipse(cx, base - trunk_h - ry * 0.7, rx, ry, n=18, rng=rng, rough=0.18)
        b.add("vegetation", crown, green, color2=dark, pattern=_BLOTCH, params=blotch, noise=10.0)
    # A hedge line along the horizon sometimes.
    if rng.random() < 0.5:
        y = horizon + rng.uniform(-0.01, 0.02) * H
        hh = rng.uniform(0.02, 0.06) * H
        x0, x1 = sorted(rng.uniform(-0.1, 1.1, size=2) * W)
        xs = np.linspace(x0, x1, 12)
        tops = y - hh * (1 + 0.3 * rng.uniform(-1, 1, size=12))
        poly = [(x0, y + 0.01 * H), *zip(xs, tops), (x1, y + 0.01 * H)]
        green = _jitter(rng, (70, 120, 45), 20)
        b.add("vegetation", poly, green, color2=tuple(c * 0.6 for c in green), pattern=_BLOTCH,
              params=(0, 0, 0.5, 0, 0, 0), noise=10.0)  # fmt: skip


def _add_ground(b: _Builder, rng, H, W, horizon, vx) -> dict:
    # Terrain everywhere below the horizon first; sidewalks and road are drawn over it.
    b.add("terrain", [(-1, horizon), (W, horizon), (W, H), (-1, H)],
          _jitter(rng, (140, 150, 90), 20), color2=_jitter(rng, (120, 110, 70), 15),
          pattern=_BLOTCH, params=(0, 0, 0.55, 0, 0, 0), noise=12.0, shade=0.12)  # fmt: skip
    road_l = rng.uniform(-0.35, 0.2) * W
    road_r = rng.uniform(0.8, 1.35) * W
    half_top = rng.uniform(0.005, 0.03) * W
    walk_l = road_l - rng.uniform(0.2, 0.6) * W
    walk_r = road_r + rng.uniform(0.2, 0.6) * W
    walk_top = half_top + rng.uniform(0.02, 0.08) * W
    ytop = horizon + 1
    tile = rng.uniform(0.02, 0.04) * W
    sw_color = _jitter(rng, (175, 160, 165), 15)
    sw_params = (tile, tile * 0.5, 0, 0, rng.uniform(0, tile), 0)
    for side in (-1, 1):
        outer = walk_l if side < 0 else walk_r
        inner = road_l if side < 0 else road_r
        b.add("sidewalk", [(vx + side * walk_top, ytop), (outer, H), (inner, H),
                           (vx + side * half_top, ytop)], sw_color,
              color2=tuple(c * 0.75 for c in sw_color), pattern=_TILES, params=sw_params,
              noise=7.0)  # fmt: skip
    road_color = _jitter(rng, (95, 92, 98), 15)
    b.add("road", [(vx - half_top, ytop), (road_l, H), (road_r, H), (vx + half_top, ytop)],
          road_color, noise=9.0, shade=0.15)  # fmt: skip
    # Dashed centre line; its width and dash length grow towards the camera.
    mark = _jitter(rng, (225, 225, 215) if rng.random() < 0.8 else (220, 190, 60), 15)
    center_bottom = (road_l + road_r) / 2 + rng.uniform(-0.1, 0.1) * W
    t = 0.05
    while t < 1.0:
        t1 = min(1.0, t + 0.08 * (0.3 + t))
        pts = []
        for tt in (t, t1):
            y = ytop + tt * (H - ytop)
            x = vx + tt * (center_bottom - vx)
            pts.append((x, y, 0.5 + 0.012 * W * tt))
        (xa, ya, wa), (xb, yb, wb) = pts
        b.add("road", [(xa - wa, ya), (xb - wb, yb), (xb + wb, yb), (xa + wa, ya)], mark,
              noise=6.0)  # fmt: skip
        t = t1 + 0.07 * (0.3 + t)
    return {"road": (road_l, road_r), "walk": (walk_l, walk_r), "top": ytop, "half_top": half_top}


def _depth(y: float, horizon: float, H: float) -> float:
    """Apparent size factor of an object standing at image row `y` (1 at the bottom)."""
    return max(0.05, (y - horizon) / max(1.0, H - horizon))


def _add_pole(b: _Builder, rng, H, W, horizon, x, y) -> None:
    s = _depth(y, horizon, H)
    ph = 0.9 * H * s
    pw = max(1.5, 0.006 * W * s)
    gray = _jitter(rng, (125, 125, 130), 20)
    b.add("pole", [(x - pw, y), (x - pw, y - ph), (x + pw, y - ph), (x + pw, y)], gray, noise=4)
    kind = rng.random()
    top = y - ph
    r = max(3.0, 0.03 * W * s)
    if kind < 0.45:
        colors = [(200, 30, 30), (30, 70, 190), (230, 200, 40)]
        c = _jitter(rng, colors[int(rng.integers(3))], 20)
        shape = int(rng.integers(3))
        cy = top + r
        if shape == 0:
            poly = _ellipse(x, cy, r, r, n=12)
        elif shape == 1:
            poly = _poly([(x - r, cy - r * 0.9), (x + r, cy - r * 0.9), (x, cy + r)])
        else:
            poly = _poly([(x - r, cy - r), (x + r, cy - r), (x + r, cy + r), (x - r, cy + r)])
        b.add("traffic sign", poly, c, color2=(240, 240, 240), noise=5)
    elif kind < 0.75:
        bw, bh = r * 0.8, r * 2.4
        box = [(x - bw, top), (x + bw, top), (x + bw, top + bh), (x - bw, top + bh)]
        b.add("traffic light", box, _jitter(rng, (40, 40, 40), 10), noise=4)
        lit = int(rng.integers(3))
        for k, c in enumerate([(230, 40, 30), (240, 180, 30), (40, 220, 90)]):
            cc = c if k == lit else tuple(v * 0.35 for v in c)
            b.add("traffic light", _ellipse(x, top + bh * (k + 0.5) / 3, bw * 0.6, bw * 0.6, 10),
                  cc, noise=3)  # fmt: skip


def _add_car(b: _Builder, rng, H, W, horizon, x, y) -> None:
    s = _depth(y, horizon, H)
    cw = rng.uniform(0.16, 0.26) * W * s
    ch = cw * rng.uniform(0.45, 0.6)
    color = tuple(float(c) for c in rng.integers(20, 235, size=3))
    label = "car"
    if rng.random() < 0.12:  # occasionally something bigger
        label = "truck" if rng.random() < 0.5 else "bus"
        ch *= 1.6
        cw *= 1.1
    inst = b.new_instance(label)
    x0, x1 = x - cw / 2, x + cw / 2
    yb = y - ch * 0.08
    body = [(x0, yb), (x0, y - ch * 0.55), (x0 + cw * 0.15, y - ch * 0.62),
            (x0 + cw * 0.25, y - ch), (x1 - cw * 0.25, y - ch), (x1 - cw * 0.15, y - ch * 0.62),
            (x1, y - ch * 0.55), (x1, yb)]  # fmt: skip
    b.add(label, body, color, noise=5, shade=0.12, instance=inst)
    glass = _jitter(rng, (45, 55, 70), 15)
    b.add(label, [(x0 + cw * 0.2, y - ch * 0.62), (x0 + cw * 0.29, y - ch * 0.92),
                  (x1 - cw * 0.29, y - ch * 0.92), (x1 - cw * 0.2, y - ch * 0.62)], glass,
          noise=4, instance=inst)  # fmt: skip
    wr = ch * 0.16
    for wx in (x0 + cw * 0.18, x1 - cw * 0.18):
        b.add(label, _ellipse(wx, yb, wr * 1.2, wr, 12), (20, 20, 22), noise=3, instance=inst)
    lamp = (230, 60, 40) if rng.random() < 0.5 else (240, 230, 200)
    for lx in (x0 + cw * 0.04, x1 - cw * 0.12):
        b.add(label, [(lx, y - ch * 0.5), (lx + cw * 0.08, y - ch * 0.5),
                      (lx + cw * 0.08, y - ch * 0.4), (lx, y - ch * 0.4)], lamp, noise=3,
              instance=inst)  # fmt: skip


def _add_person(b: _Builder, rng, H, W, horizon, x, y) -> None:
    s = _depth(y, horizon, H)
    ph = rng.uniform(0.28, 0.36) * H * s
    pw = ph * 0.28
    inst = b.new_instance("person")
    shirt = tuple(float(c) for c in rng.integers(20, 240, size=3))
    pants = tuple(float(c) for c in rng.integers(15, 120, size=3))
    skin = _jitter(rng, (205, 160, 130), 35)
    head_r = ph * 0.09
    legs = [(x - pw * 0.4, y), (x - pw * 0.3, y - ph * 0.48), (x + pw * 0.3, y - ph * 0.48),
            (x + pw * 0.4, y), (x + pw * 0.1, y), (x, y - ph * 0.3), (x - pw * 0.1, y)]  # fmt: skip
    b.add("person", legs, pants, noise=5, instance=inst)
    b.add("person", [(x - pw * 0.5, y - ph * 0.45), (x - pw * 0.45, y - ph * 0.8),
                     (x + pw * 0.45, y - ph * 0.8), (x + pw * 0.5, y - ph * 0.45)], shirt,
          noise=5, instance=inst)  # fmt: skip
    b.add("person", _ellipse(x, y - ph * 0.8 - head_r, head_r * 0.85, head_r, 12), skin, noise=4,
          instance=inst)  # fmt: skip


def generate_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """Lay out one random street scene.

    Args:
        rng: the scene's random generator (all randomness comes from it).
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        A `Scene` whose shapes are ordered back to front.
    """
    H, W = height, width
    b = _Builder()
    horizon = rng.uniform(0.36, 0.52) * H
    vx = rng.uniform(0.3, 0.7) * W
    sky_top = _jitter(rng, (90, 140, 210), 25)
    sky_bottom = _jitter(rng, (200, 215, 230), 20)
    b.add("sky", [(-1, -1), (W, -1), (W, horizon + 2), (-1, horizon + 2)], sky_top,
          color2=sky_bottom, pattern=_GRADIENT, params=(0, 0, 0, 0, 0, horizon), noise=3.0,
          shade=0.04)  # fmt: skip
    _add_buildings(b, rng, H, W, horizon)
    _add_trees(b, rng, H, W, horizon)
    ground = _add_ground(b, rng, H, W, horizon, vx)
    road_l, road_r = ground["road"]
    walk_l, walk_r = ground["walk"]
    top = ground["top"]

    def edge(x_bottom: float, t: float) -> float:
        return vx + t * (x_bottom - vx)

    # Things standing on the ground: sorted by their foot row so nearer ones occlude farther.
    things = []
    for _ in range(int(rng.integers(1, 5))):
        t = rng.uniform(0.15, 0.95)
        side = rng.choice([-1, 1])
        xr = edge(road_l if side < 0 else road_r, t)
        xw = edge(walk_l if side < 0 else walk_r, t)
        things.append(("pole", xr + rng.uniform(0.1, 0.4) * (xw - xr), top + t * (H - top)))
    for _ in range(int(rng.integers(0, 6))):
        t = rng.uniform(0.08, 1.05)
        u = rng.uniform(0.1, 0.9)
        things.append(("car", edge(road_l, t) + u * (edge(road_r, t) - edge(road_l, t)),
                       top + t * (H - top)))  # fmt: skip
    for _ in range(int(rng.integers(0, 6))):
        t = rng.uniform(0.15, 1.0)
        side = rng.choice([-1, 1])
        xr = edge(road_l if side < 0 else road_r, t)
        xw = edge(walk_l if side < 0 else walk_r, t)
        if rng.random() < 0.2:  # someone crossing the road
            xw = edge(road_r if side < 0 else road_l, t)
        things.append(("person", xr + rng.uniform(0.05, 0.9) * (xw - xr), top + t * (H - top)))
    things.sort(key=lambda th: th[2])
    add = {"pole": _add_pole, "car": _add_car, "person": _add_person}
    for kind, x, y in things:
        add[kind](b, rng, H, W, horizon, x, y)
    if len(b.shapes) > 254:  # object indices are drawn into an 8-bit map
        b.shapes = b.shapes[:254]
    tint = tuple(float(v) for v in rng.uniform(0.9, 1.1, size=3))
    return Scene(H, W, b.shapes, float(rng.uniform(0.75, 1.2)), float(rng.uniform(-15, 15)), tint)


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------

_ID_OF = {name: lab.id for name, lab in name2label.items()}
_TRAIN_ID_OF = {name: lab.trainId for name, lab in name2label.items()}


def _low_freq(rng: np.random.Generator, H: int, W: int, cell: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    gh, gw = max(2, H // cell + 2), max(2, W // cell + 2)
    grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32), mode="F")
    return np.asarray(grid.resize((W, H), Image.BILINEAR), dtype=np.float32)


def render_scene(scene: Scene, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw a scene.

    Args:
        scene: the layout from `generate_scene`.
        rng: random generator for textures and noise.

    Returns:
        dict with "image" (H, W, 3) uint8 RGB, "label_ids" and "train_ids" (H, W) uint8,
        "instance_ids" (H, W) uint16 (Cityscapes encoding: id * 1000 + k for instance classes).
    """
    H, W = scene.height, scene.width
    canvas = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(canvas)
    for i, shape in enumerate(scene.shapes):
        draw.polygon([tuple(p) for p in shape.polygon.tolist()], fill=i + 1)
    obj = np.asarray(canvas)

    n = len(scene.shapes) + 1
    ids = np.zeros(n, np.uint8)
    train = np.full(n, 255, np.uint8)
    inst = np.zeros(n, np.uint16)
    c1 = np.zeros((n, 3), np.float32)
    c2 = np.zeros((n, 3), np.float32)
    pattern = np.zeros(n, np.int64)
    params = np.ones((n, 6), np.float32)
    noise = np.zeros(n, np.float32)
    shade = np.zeros(n, np.float32)
    for i, s in enumerate(scene.shapes, start=1):
        ids[i] = _ID_OF[s.label]
        train[i] = _TRAIN_ID_OF[s.label]
        inst[i] = int(ids[i]) * 1000 + s.instance if s.instance >= 0 else int(ids[i])
        c1[i], c2[i], pattern[i], params[i] = s.color, s.color2, s.pattern, s.params
        noise[i], shade[i] = s.noise, s.shade

    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    pat = pattern[obj]
    w = np.zeros((H, W), np.float32)
    blotch = None
    # Each texture is evaluated only on the pixels of shapes that use it.
    for kind in np.unique(pattern[1:]):
        if kind == _FLAT:
            continue
        sel = pat == kind
        if not sel.any():
            continue
        x, y = xx[sel], yy[sel]
        px, py, dx, dy, ox, oy = params[obj[sel]].T
        if kind == _WINDOWS:
            m = (np.mod(x - ox, px) < dx) & (np.mod(y - oy, py) < dy)
        elif kind == _TILES:
            m = (np.mod(x - ox, px) < 1.5) | (np.mod(y, py) < 1.2)
        elif kind == _SLATS:
            m = np.mod(x - ox, px) < dx
        elif kind == _HLINES:
            m = np.mod(y - oy, py) < dy
        elif kind == _BLOTCH:
            if blotch is None:
                blotch = _low_freq(rng, H, W, 6) * 0.6 + _low_freq(rng, H, W, 2) * 0.4
            m = blotch[sel] > dx
        else:  # _GRADIENT
            w[sel] = np.clip(y / np.maximum(oy, 1.0), 0, 1) ** 1.5
            continue
        w[sel] = m

    img = c1[obj] * (1.0 - w)[..., None] + c2[obj] * w[..., None]
    shading = _low_freq(rng, H, W, max(8, min(H, W) // 6)) - 0.5
    img *= (1.0 + 2.0 * shade[obj] * shading)[..., None]
    img += noise[obj][..., None] * rng.standard_normal((H, W, 1), dtype=np.float32)
    img += 3.0 * rng.standard_normal((H, W, 3), dtype=np.float32)
    img = img * (scene.gain * np.asarray(scene.tint, np.float32)) + scene.bias
    image = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return {
        "image": image,
        "label_ids": ids[obj],
        "train_ids": train[obj],
        "instance_ids": inst[obj],
    }


def scene_to_json(scene: Scene) -> dict:
    """The Cityscapes ``gtFine_polygons.json`` content of a scene."""
    return {
        "imgHeight": scene.height,
        "imgWidth": scene.width,
        "objects": [{"label": s.label, "polygon": s.polygon.tolist()} for s in scene.shapes],
    }


# ------------------------------------------------------------------------------------------
# Dataset writer
# ------------------------------------------------------------------------------------------


def _save_png(array: np.ndarray, path: Path, compress_level: int) -> None:
    # Written to a temporary name and renamed so that an interrupted run never leaves a
    # truncated PNG that a later run would take for a finished one.
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG", compress_level=compress_level)
    os.replace(tmp, path)


def _image_stem(split: str, index: int) -> tuple[str, str]:
    cities = CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index:06d}_000019"


def _write_one(task: tuple) -> None:
    root, split, index, size, seed, compress_level = task
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    scene = generate_scene(rng, size[0], size[1])
    out = render_scene(scene, rng)
    city, stem = _image_stem(split, index)
    img_dir = Path(root) / "leftImg8bit" / split / city
    gt_dir = Path(root) / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    _save_png(out["image"], img_dir / f"{stem}_leftImg8bit.png", compress_level)
    _save_png(out["label_ids"], gt_dir / f"{stem}_gtFine_labelIds.png", compress_level)
    _save_png(out["train_ids"], gt_dir / f"{stem}_gtFine_labelTrainIds.png", compress_level)
    _save_png(out["instance_ids"], gt_dir / f"{stem}_gtFine_instanceIds.png", compress_level)
    tmp = gt_dir / f"{stem}_gtFine_polygons.json.tmp"
    tmp.write_text(json.dumps(scene_to_json(scene)))
    os.replace(tmp, gt_dir / f"{stem}_gtFine_polygons.json")


def _write_all(tasks: list[tuple], *, num_workers: int, progress: bool) -> None:
    """Run `_write_one` on every task, in worker processes when `num_workers` > 0.

    Args:
        tasks: the arguments of `_write_one`, one tuple per image.
        num_workers: worker processes (0, or a single task: in this process).
        progress: show a progress bar.
    """
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="synthetic", unit="img")
    if num_workers > 0 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            for _ in pool.map(_write_one, tasks, chunksize=4):
                if bar is not None:
                    bar.update()
    else:
        for task in tasks:
            _write_one(task)
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()


def generate_dataset(
    output_dir: str | os.PathLike,
    *,
    num_train: int,
    num_val: int,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    num_workers: int = 0,
    compress_level: int = 1,
    progress: bool = False,
) -> Path:
    """Write a synthetic street-scene dataset in the Cityscapes layout.

    Re-running with the same arguments on a finished directory returns at once (a marker file
    records the arguments); different arguments regenerate the images.

    Args:
        output_dir: dataset root (gets ``leftImg8bit/`` and ``gtFine/``).
        num_train: number of training images.
        num_val: number of validation images.
        size: (H, W) of every image.
        seed: the same seed gives byte-identical files.
        num_workers: worker processes (0: in this process).
        compress_level: PNG zlib level (1 keeps generation fast; decoding speed barely depends
            on it).
        progress: show a progress bar.

    Returns:
        The dataset root.
    """
    root = Path(output_dir)
    height, width = (int(v) for v in size)
    if height < 16 or width < 16:
        raise ValueError(f"synthetic images must be at least 16x16 pixels, got {height}x{width}")
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    spec = {
        "num_train": int(num_train),
        "num_val": int(num_val),
        "size": [height, width],
        "seed": int(seed),
        "compress_level": int(compress_level),
        "generator_version": 1,
    }
    marker = root / MARKER_NAME
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == spec:
                return root
        except (OSError, ValueError):
            pass
    elif root.is_dir() and any(root.iterdir()):
        raise ValueError(
            f"{root} is not empty and was not written by the synthetic generator (it has no "
            f"{MARKER_NAME}); nothing in it was changed. Pass an empty or new folder."
        )
    root.mkdir(parents=True, exist_ok=True)
    # Claimed before the first image is written, so that an interrupted run can be repeated:
    # the marker (unequal to `spec` until the end) says the folder is the generator's.
    _write_marker(marker, {**spec, "complete": False})
    for split, count in (("train", num_train), ("val", num_val)):
        _remove_stale(root, split, count)
    tasks = [
        (str(root), split, i, (height, width), int(seed), int(compress_level))
        for split, count in (("train", num_train), ("val", num_val))
        for i in range(count)
    ]
    _write_all(tasks, num_workers=num_workers, progress=progress)
    _write_marker(marker, spec)
    return root


def _write_marker(marker: Path, content: dict) -> None:
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(content))
    os.replace(tmp, marker)


def _remove_stale(root: Path, split: str, count: int) -> None:
    """Delete images of an earlier, larger run so the split holds exactly `count` images.

    Only files named as the generator names them (``<city>_<6 digits>_000019_<kind>``, in the
    city folders it uses) are candidates; anything else someone put there stays.
    """
    keep = {_image_stem(split, i)[1] for i in range(count)}
    cities = set(CITIES[split])
    pattern = re.compile(
        r"^(?P<stem>(?P<city>[a-z]+)_\d{6}_000019)_(leftImg8bit\.png|gtFine_(labelIds|"
        r"labelTrainIds|instanceIds)\.png|gtFine_polygons\.json)(\.tmp)?$"
    )
    for sub in ("leftImg8bit", "gtFine"):
        base = root / sub / split
        if not base.is_dir():
            continue
        for path in base.glob("*/*"):
            m = pattern.match(path.name)
            if (
                m is None
                or m["city"] != path.parent.name
                or m["city"] not in cities
                or m["stem"] in keep
                or path.is_symlink()
                or not path.is_file()
            ):
                continue
            path.unlink()
