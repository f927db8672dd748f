"""Procedural scenes whose classes are shapes and textures, never colours, so colour alone cannot solve them."""

from __future__ import annotations

import zlib

import numpy as np

from mckd.data.source import Sample, SegmentationSource

CLASS_NAMES = ("background", "disc", "ring", "square", "triangle", "cross")
SPLIT_SIZES_KEYS = {"train": "num_train", "val": "num_val", "test": "num_test"}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float,
                aspect: float) -> np.ndarray:
    """Pixels covered by one shape of `kind` centred at (cy, cx) with radius r."""
    c, s = np.cos(angle), np.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / aspect
    v = (-(xx - cx) * s + (yy - cy) * c) * aspect
    d = np.sqrt(u * u + v * v)
    if kind == "disc":
        return d <= r
    if kind == "ring":
        return (d <= r) & (d >= 0.55 * r)
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "triangle":
        # an equilateral triangle as the intersection of three half-planes
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = angle + k * 2 * np.pi / 3
            inside &= (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a) <= 0.5 * r
        return inside
    if kind == "cross":
        bar = 0.3 * r
        return ((np.abs(u) <= r) & (np.abs(v) <= bar)) | ((np.abs(v) <= r) & (np.abs(u) <= bar))
    raise ValueError(kind)


def _class_texture(cls: int, yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A per-class pattern in [-1, 1] (solid, stripes, checker, dots, diagonals) with random scale and phase."""
    period = rng.uniform(4.0, 7.0)
    py, px = rng.uniform(0, period, size=2)
    u, v = (xx + px) * 2 * np.pi / period, (yy + py) * 2 * np.pi / period
    patterns = {1: np.zeros_like(u), 2: np.sign(np.sin(v)), 3: np.sign(np.sin(u) * np.sin(v)),
                4: np.where(np.sin(u) * np.sin(v) > 0.6, 1.0, -0.3), 5: np.sign(np.sin((u + v) / np.sqrt(2)))}
    return patterns[cls]


def _background(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A smooth gradient, a stripe texture and blotches in random colours."""
    base = rng.uniform(0, 255, size=3)
    grad = rng.uniform(-80, 80, size=3)
    t = (xx * np.cos(rng.uniform(0, np.pi)) + yy * np.sin(rng.uniform(0, np.pi))) / max(h, w)
    img = base[None, None] + t[..., None] * grad[None, None]
    freq, phase = rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
    stripes = np.sin(freq * (xx * np.cos(phase) + yy * np.sin(phase)) + phase)
    img += stripes[..., None] * rng.uniform(5, 35, size=3)
    for _ in range(rng.integers(1, 4)):  # blotches: colour patches that are not objects
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, max(h, w) / 4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-60, 60, size=3)
    return img


def render_scene(seed: int, height: int = 96, width: int = 96, max_objects: int = 6,
                 noise: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic scene: an HxWx3 uint8 image and its HxW uint8 mask."""
    rng = np.random.default_rng(seed)
    yy, xx = _grid(height, width)
    img = _background(rng, height, width, yy, xx)
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(2, max_objects + 1)):  # later objects occlude earlier ones
        cls = int(rng.integers(1, len(CLASS_NAMES)))
        r = rng.uniform(0.08, 0.24) * min(height, width)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        covered = _shape_mask(CLASS_NAMES[cls], yy, xx, cy, cx, r, rng.uniform(0, 2 * np.pi),
                              rng.uniform(0.75, 1.3))
        colour = rng.uniform(30, 225, size=3)
        shading = 1 + 0.2 * np.sin(rng.uniform(0.05, 0.3) * (xx + yy) + rng.uniform(0, 6))
        texture = _class_texture(cls, yy, xx, rng) * rng.uniform(20, 45)
        img[covered] = colour[None] * shading[covered][:, None] + texture[covered][:, None]
        mask[covered] = cls
    img += rng.normal(0, noise, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


class SyntheticSource(SegmentationSource):
    """Scenes rendered on the fly from (seed, split, index); nothing is read from disk."""

    name = "synthetic"
    class_names = CLASS_NAMES
    reads_files = False

    def __init__(self, seed: int = 0, num_train: int = 400, num_val: int = 100, num_test: int = 0,
                 height: int = 96, width: int = 96, max_objects: int = 6, noise: float = 12.0):
        self.seed = seed
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.height, self.width, self.max_objects, self.noise = height, width, max_objects, noise
        self.has_test = num_test > 0
        # rendered scenes, kept: one 64x64 scene takes ~10 ms to render, a tenth of a CPU training step per
        # batch of 16; 1,000 of them hold ~16 MB
        self._scenes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def samples(self, split: str) -> list[Sample]:
        return [Sample(f"{split}_{i:05d}", f"synthetic://{split}/{i}", f"synthetic://{split}/{i}")
                for i in range(self.sizes[split])]

    def _scene(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._scenes:
            scene_seed = zlib.crc32(f"{self.seed}:{key}".encode())
            self._scenes[key] = render_scene(scene_seed, self.height, self.width, self.max_objects, self.noise)
        image, mask = self._scenes[key]
        return image.copy(), mask.copy()

    def read_image(self, sample: Sample) -> np.ndarray:
        return self._scene(sample.image)[0]

    def read_mask(self, sample: Sample) -> np.ndarray | None:
        return None if sample.mask is None else self._scene(sample.mask)[1]

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
        image, mask = self._scene(sample.image)
        return image, (None if sample.mask is None else mask)
