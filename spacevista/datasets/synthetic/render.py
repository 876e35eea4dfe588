"""Rendering of synthetic scenes (`scenes`): the per-scale background textures, drawn in world
units so their period carries the scale, and the same object drawings at every scale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spacevista.datasets.synthetic.scenes import COLORS, Scene, SceneObject


def render(scene: Scene, rng: np.random.Generator) -> list[np.ndarray]:
    """The clip's frames as uint8 HxWx3 arrays."""
    canvas = _BACKGROUNDS[scene.scale](scene, rng)
    for obj in scene.objects:
        _draw(canvas, obj)
    s = scene.size
    return [canvas[y:y + s, x:x + s] for x, y in scene.offsets]


def _grid(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """World coordinates in metres of every canvas pixel (x along columns, y along rows), randomly shifted."""
    w, h = scene.canvas
    x = (np.arange(w) + rng.uniform(0, 1000)) / scene.ppm
    y = (np.arange(h) + rng.uniform(0, 1000)) / scene.ppm
    return np.broadcast_to(x[None, :], (h, w)), np.broadcast_to(y[:, None], (h, w))


def _lines(coord: np.ndarray, period_m: float, ppm: float, width_px: float = 1.0) -> np.ndarray:
    """True on pixels within ``width_px`` of a multiple of ``period_m``."""
    return np.mod(coord * ppm, period_m * ppm) < width_px


def _fill(shape: tuple[int, int], color: Sequence[float]) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, dtype=np.float32), (*shape, 3)).copy()


def _cutting_mat(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(scene, rng)
    img = _fill(x.shape, (30, 112, 84))
    img[_lines(x, 0.01, scene.ppm) | _lines(y, 0.01, scene.ppm)] = (95, 170, 135)
    img[_lines(x, 0.05, scene.ppm, 2) | _lines(y, 0.05, scene.ppm, 2)] = (200, 232, 212)
    return img


def _wood(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(scene, rng)
    plank = np.floor(y / 0.15)
    phase = np.sin(plank * 12.9898) * 43758.5453 % 1.0
    grain = np.round(2 * np.sin(2 * np.pi * (y / 0.04 + 0.6 * np.sin(2 * np.pi * x / 0.5 + 6 * phase)))) / 2
    img = _fill(x.shape, (168, 112, 62)) * (1 + 0.1 * grain + 0.12 * np.round(4 * phase) / 4)[..., None]
    img[_lines(y, 0.15, scene.ppm)] = (82, 50, 24)
    return img


def _tiles(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(scene, rng)
    checker = (np.floor(x / 0.8) + np.floor(y / 0.8)) % 2 == 0
    img = np.where(checker[..., None], np.float32([168, 170, 182]), np.float32([128, 132, 146]))
    img[_lines(x, 0.8, scene.ppm) | _lines(y, 0.8, scene.ppm)] = (62, 62, 66)
    return img


def _sky_grass(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(scene, rng)
    stripes = np.floor(x / 4.0) % 2
    img = _fill(x.shape, (72, 146, 54)) * (0.9 + 0.2 * stripes)[..., None]
    rows = np.arange(scene.canvas[1], dtype=np.float32)[:, None]
    t = (rows / max(scene.horizon, 1))[..., None]
    sky = (1 - t) * np.float32([95, 160, 232]) + t * np.float32([190, 220, 245])
    img[:scene.horizon] = np.broadcast_to(sky, img.shape)[:scene.horizon]
    return img


def _fields(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    x, y = _grid(scene, rng)
    palette = np.float32([[206, 182, 86], [92, 140, 58], [142, 108, 66], [124, 134, 60], [176, 160, 96]])
    col, row = np.floor(x / 80.0).astype(np.int64), np.floor(y / 80.0).astype(np.int64)
    cell = ((col * 73856093) ^ (row * 19349663) ^ int(rng.integers(0, 1 << 20))) % 7919
    img = palette[cell % len(palette)]
    rows = np.floor(np.where(cell % 2 == 0, x, y) / 16.0) % 2
    img = img * (0.92 + 0.16 * rows)[..., None]
    img[_lines(x, 80.0, scene.ppm) | _lines(y, 80.0, scene.ppm)] = (182, 170, 146)
    return img


_BACKGROUNDS = {"tiny_tabletop": _cutting_mat, "tabletop": _wood, "indoor": _tiles,
                "outdoor": _sky_grass, "drone": _fields}


def _draw(canvas: np.ndarray, obj: SceneObject) -> None:
    color = np.float32(COLORS[obj.name.split()[0]])
    region = canvas[obj.y0:obj.y0 + obj.h, obj.x0:obj.x0 + obj.w]
    if obj.shape == "block":
        region[:] = color * 0.45
        region[1:-1, 1:-1] = color
        return
    yy, xx = np.mgrid[0:obj.h, 0:obj.w]
    r = obj.w / 2
    dist = np.hypot(xx + 0.5 - r, yy + 0.5 - r)
    region[dist <= r] = color * 0.45
    region[dist <= r - 1.2] = color
