"""Near-duplicates of images: what a camera sees again a moment later.

Each copy gets one small change, chosen at random: a shift by up to ``max_shift`` pixels,
sensor noise, or a brightness change (the cache benchmark's workload: "the same image with
small shifts, noise or brightness change"). Used to calibrate the neural caches' distance
threshold and to build the benchmark's stream of repeats. Pure numpy, no TensorFlow.
"""

from __future__ import annotations

import numpy as np

KINDS = ("shift", "noise", "brightness")


def near_duplicates(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    max_shift: int = 1,
    noise_std: float = 6.0,
    max_brightness: float = 0.1,
) -> np.ndarray:
    """A perturbed copy of each uint8 image ``(n, H, W[, C])`` with one of the three changes.

    shift: by up to ``max_shift`` pixels along each axis (at least one pixel, zero-filled);
    noise: Gaussian, ``noise_std`` grey levels; brightness: a factor in ``1 ± max_brightness``
    (at least half of it). Results are clipped back to uint8.
    """
    images = np.asarray(images)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        kind = KINDS[rng.integers(len(KINDS))]
        copy = image.astype(np.float32)
        if kind == "shift":
            dy, dx = 0, 0
            while dy == 0 and dx == 0:
                dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
            h, w = image.shape[:2]
            shifted = np.zeros_like(copy)
            shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = copy[
                max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
            ]
            copy = shifted
        elif kind == "noise":
            copy = copy + rng.normal(0.0, noise_std, size=image.shape)
        else:
            copy = copy * (1.0 + rng.choice([-1, 1]) * rng.uniform(max_brightness / 2, max_brightness))
        out[i] = np.clip(np.rint(copy), 0, 255).astype(images.dtype)
    return out
