"""Real sample photos for tests, as PIL images (no network: they ship with scikit-image / scikit-learn).

``photo(name)`` for one, ``photos()`` for all of them (name -> image, in a fixed order):

=========  ===========  =====  ===============================
name       size (WxH)   mode   source
=========  ===========  =====  ===============================
astronaut  512 x 512    RGB    skimage.data.astronaut
chelsea    451 x 300    RGB    skimage.data.chelsea (a cat)
coffee     600 x 400    RGB    skimage.data.coffee
rocket     640 x 427    RGB    skimage.data.rocket
camera     512 x 512    L      skimage.data.camera (grayscale)
china      640 x 427    RGB    sklearn load_sample_images()
flower     640 x 427    RGB    sklearn load_sample_images()
=========  ===========  =====  ===============================

The files are read straight from the installed packages (``photo_path``) so that importing this module
does not import scikit-image or scikit-learn; ``skimage.data`` is the fallback if a file moved.
``camera_size`` makes a ~12 megapixel JPEG-like test image from a photo (bicubic upscale + mild noise).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_NAMES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "camera", "china", "flower")
RGB_PHOTO_NAMES: tuple[str, ...] = tuple(n for n in PHOTO_NAMES if n != "camera")

_FILES: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "camera": ("skimage", "data/camera.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
}


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # finds the package without importing it
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def photo_path(name: str) -> Path | None:
    """The file the photo ships as (PNG or JPEG), or None if it is not where expected."""
    package, relative = _FILES[name]
    base = _package_dir(package)
    if base is None:
        return None
    path = base / relative
    return path if path.is_file() else None


@functools.cache
def _load(name: str) -> Image.Image:
    path = photo_path(name)
    if path is not None:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        index = [Path(f).stem for f in bunch.filenames].index(name)
        return Image.fromarray(bunch.images[index])
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def photo(name: str) -> Image.Image:
    """A fresh copy of one sample photo (``RGB``, or ``L`` for ``camera``)."""
    if name not in _FILES:
        raise KeyError(f"unknown photo {name!r}; choose from {PHOTO_NAMES}")
    return _load(name).copy()


def photos(names: tuple[str, ...] = PHOTO_NAMES) -> dict[str, Image.Image]:
    """``{name: image}`` for the given names, in order."""
    return {name: photo(name) for name in names}


def camera_size(
    image: Image.Image, *, megapixels: float = 12.0, noise_sigma: float = 3.0, seed: int = 0
) -> Image.Image:
    """Upscale ``image`` (bicubic, aspect kept) to about ``megapixels`` and add Gaussian noise.

    Gives camera-sized test images (save them as JPEG quality ~90) with some fine texture, like sensor
    noise, rather than the perfectly smooth result of a plain upscale.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    factor = math.sqrt(megapixels * 1e6 / (width * height))
    big = rgb.resize((round(width * factor), round(height * factor)), Image.Resampling.BICUBIC)
    # Noise from a tile of odd, co-prime size repeated over the image: as fine-grained as sensor noise,
    # and ten times cheaper than drawing 36 million normal samples.
    rng = np.random.default_rng(seed)
    tile = np.rint(rng.standard_normal((509, 521, 3), dtype=np.float32) * np.float32(noise_sigma))
    reps = (-(-big.size[1] // 509), -(-big.size[0] // 521), 1)
    noise = np.tile(tile.astype(np.int16), reps)[: big.size[1], : big.size[0]]
    values = np.asarray(big).astype(np.int16) + noise
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "RGB")
