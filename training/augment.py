"""Near-duplicates of images: what a camera sees again a moment later.

Small shifts, sensor noise and a brightness change, applied to uint8 images. Used to
calibrate the neural caches' distance threshold and to build the cache benchmark's stream
of repeats. Pure numpy, no TensorFlow.
"""

from __future__ import annotations

import numpy as np


def near_duplicates(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    max_shift: int = 1,
    noise_std: float = 6.0,
    max_brightness: float = 0.1,
) -> np.ndarray:
    """A perturbed copy of each uint8 image ``(n, H, W[, C])``: shift, noise, brightness.

    Each image is shifted by up to ``max_shift`` pixels along each axis (zero-filled),
    scaled in brightness by a factor in ``1 ± max_brightness``, and given Gaussian noise of
    ``noise_std`` grey levels; the result is clipped back to uint8.
    """
    images = np.asarray(images)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        shifted = np.zeros_like(image)
        h, w = image.shape[:2]
        shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
            max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
        factor = 1.0 + rng.uniform(-max_brightness, max_brightness)
        noisy = shifted.astype(np.float32) * factor + rng.normal(0.0, noise_std, size=image.shape)
        out[i] = np.clip(np.rint(noisy), 0, 255).astype(images.dtype)
    return out
