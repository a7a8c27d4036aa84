"""Fashion-MNIST loading and normalisation (NumPy only; no torch).

Data comes from the Debian package ``dataset-fashion-mnist`` (IDX files in
/usr/share/datasets/fashion-mnist/, gzipped or not). When it is missing and
scikit-learn is installed, sklearn's 8x8 digits are used instead (scaled to
28x28), with a message on stderr.
"""

from __future__ import annotations

import gzip
import os
import sys
from typing import Optional, Tuple

import numpy as np

__all__ = ["FMNIST_DIR", "FMNIST_MEAN", "FMNIST_STD", "CLASSES",
           "load_fashion_mnist", "normalize", "read_idx", "scale_pixels"]

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Mean and std of the Fashion-MNIST training pixels scaled to [0, 1].
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` or plain) into a uint8 array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    n = int(np.prod(dims)) if dims else 0
    if len(data) != header + n:
        raise ValueError(f"{path}: expected {header + n} bytes for shape {dims}, got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(root: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz"):
        p = os.path.join(root, name)
        if os.path.exists(p):
            return p
    return None


def _digits_fallback(split: str) -> Tuple[np.ndarray, np.ndarray]:
    """sklearn digits (1797 images, 8x8, 0..16) -> 28x28 uint8: 3x nearest upsample to
    24x24, zero-padded by 2. Fixed split: a seeded permutation, first 80% train."""
    from sklearn.datasets import load_digits

    d = load_digits()
    img = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    img = np.kron(img, np.ones((1, 3, 3), dtype=np.uint8))
    img = np.pad(img, ((0, 0), (2, 2), (2, 2)))
    labels = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.8 * len(labels))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return img[idx], labels[idx]


def load_fashion_mnist(split: str = "train", root: Optional[str] = None,
                       allow_fallback: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: uint8 (N, 28, 28) and int64 (N,).

    ``split``: "train" (60000) or "test" (10000). ``root`` defaults to
    $LOWBIT_FMNIST_DIR or /usr/share/datasets/fashion-mnist. If the files are
    missing and ``allow_fallback``, sklearn's digits are returned instead
    (with a message on stderr); if that is impossible too, RuntimeError.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = root or os.environ.get("LOWBIT_FMNIST_DIR", FMNIST_DIR)
    img_path, lbl_path = (_find(root, stem) for stem in _FILES[split])
    if img_path and lbl_path:
        images, labels = read_idx(img_path), read_idx(lbl_path).astype(np.int64)
        if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise ValueError(f"{root}: unexpected shapes {images.shape} / {labels.shape}")
        return images, labels
    missing = f"Fashion-MNIST {split} files not found in {root}"
    if allow_fallback:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            pass
        else:
            print(f"lowbit: {missing}; falling back to scikit-learn's digits dataset "
                  "(8x8 digits upsampled to 28x28). Install the Debian package "
                  "'dataset-fashion-mnist' for the real data.", file=sys.stderr)
            return _digits_fallback(split)
    raise RuntimeError(f"{missing}. Install it with `apt-get install dataset-fashion-mnist` "
                       "(or set LOWBIT_FMNIST_DIR), or install scikit-learn for the "
                       "digits fallback.")


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) -> float32 (N, 1, 28, 28),
    ``(images / 255 - FMNIST_MEAN) / FMNIST_STD``."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must have shape (N, H, W) or (N, 1, H, W), got {images.shape}")
    return scale_pixels(images, FMNIST_MEAN, FMNIST_STD)


def scale_pixels(images: np.ndarray, mean=0.0, std=1.0) -> np.ndarray:
    """uint8 NCHW pixels -> float32 ``(images / 255 - mean) / std``, in float32; ``mean`` and
    ``std``: one number, or one per channel."""
    c = images.shape[1]
    mean = _per_channel(mean, c, "mean")
    std = _per_channel(std, c, "std")
    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    return (x - mean) / std


def _per_channel(v, channels: int, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float32).reshape(-1)
    if arr.size not in (1, channels):
        raise ValueError(f"{name}: expected one number or {channels} (one per channel), got {arr.size}")
    if name == "std" and not np.all(arr > 0):
        raise ValueError(f"std: expected positive numbers, got {arr.tolist()}")
    return arr.reshape(-1, 1, 1)
