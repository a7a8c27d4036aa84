"""Offline scoring: rows of images in, predictions out (``lowbit run ... --output x.parquet``, and
:mod:`lowbit.ray`). NumPy only at import; pyarrow (parquet) and Pillow (image files) are imported
when a file of that kind is read or written (the ``ray`` extra installs both).

One layout rule for a batch of rows, everywhere (:func:`to_model_input`):

* **float** rows are model input as is: (C, H, W) per row in the model's input layout, or the same
  C*H*W values flattened (a parquet list column). Other float types are cast to float32.
* **uint8** rows are images, (H, W) (one channel) or (H, W, C): they become float32
  ``(pixel / 255 - mean) / std`` per channel (:func:`lowbit.datasets.scale_pixels`), then (C, H, W).
* **bytes** rows are encoded image files (PNG, JPEG, ...): decoded with Pillow to the model's
  channel count (mode ``L`` for 1 channel, ``RGB`` for 3), then as uint8 rows.

Inputs (:func:`open_source`): a ``.npy`` file (float32 (N, C, H, W), or uint8 (N, H, W[, C]) images),
a folder of image files (decoded with Pillow to the model's channel count: mode ``L`` for 1
channel, ``RGB`` for 3; every image must have the same size), or a ``.parquet`` file whose
``column`` holds one image per row (a list of numbers, nested or flat, or encoded image bytes).

Output (:class:`PredictionWriter`): one parquet file with the input's identifying columns (``row``
for a ``.npy``, ``path`` for a folder, every other column of a parquet input), ``logits`` (a
fixed-size list of float32 per row: the model's output row, flattened) and ``top1`` (int64, the
index of the largest logit).
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..train.datasets import scale_pixels

__all__ = ["IMAGE_EXTENSIONS", "OUTPUT_COLUMNS", "PredictionWriter", "Progress", "Source", "arrow_rows",
           "check_output_columns", "decode_image", "image_mode", "input_kind", "list_images", "open_source",
           "run_local", "to_model_input", "top1"]

# The file types ray.data.read_images reads by default, so both paths see the same files.
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif")
OUTPUT_COLUMNS = ("logits", "top1")


def to_model_input(values, input_shape, mean=0.0, std=1.0, name: str = "image") -> np.ndarray:
    """A float32 (N, C, H, W) batch for a model whose input is ``input_shape`` = (C, H, W), from one
    batch of a column (the layout rule in the module docstring). ``values``: an array with the
    rows along axis 0, or a sequence / object array of rows. ``name`` names the column in errors."""
    c, h, w = input_shape
    if isinstance(values, (list, tuple)) or (isinstance(values, np.ndarray) and values.dtype == object):
        encoded = (bytes, bytearray, memoryview)
        rows = [decode_image(v, image_mode(c), name) if isinstance(v, encoded) else np.asarray(v) for v in values]
        if not rows:
            raise ValueError(f"{name}: empty batch")
        shapes = sorted({r.shape for r in rows})
        if len(shapes) > 1:
            raise ValueError(f"{name}: rows of different shapes {shapes[:3]} in one batch: every row needs "
                             f"the same shape")
        values = np.stack(rows)
    values = np.asarray(values)
    if len(values) == 0:
        raise ValueError(f"{name}: empty batch")
    if values.dtype == np.uint8:
        if values.ndim == 2 and values.shape[1] == h * w * c:
            values = values.reshape(-1, h, w, c)
        elif values.ndim == 3:
            values = values[..., None]
        if values.ndim != 4 or values.shape[3] != c:
            raise ValueError(f"{name}: uint8 rows are images (H, W) or (H, W, C) with C = {c} channels, got "
                             f"rows of shape {values.shape[1:]}")
        return scale_pixels(values.transpose(0, 3, 1, 2), mean, std)
    if values.dtype.kind != "f":
        raise TypeError(f"{name}: expected float rows (C, H, W) = {tuple(input_shape)} or uint8 images, got "
                        f"dtype {values.dtype}")
    values = values.astype(np.float32, copy=False)
    if values.ndim == 2 and values.shape[1] == c * h * w:
        return values.reshape(-1, c, h, w)
    if values.ndim != 4:
        raise ValueError(f"{name}: float rows must be (C, H, W) = {tuple(input_shape)} or {c * h * w} flattened "
                         f"values, got rows of shape {values.shape[1:]}")
    return values


def check_output_columns(names, what: str) -> None:
    """ValueError when columns ``names`` (of ``what``) include one that the output adds."""
    clash = [c for c in OUTPUT_COLUMNS if c in names]
    if clash:
        raise ValueError(f"{what} already has column(s) {clash}, which the output adds")


def top1(logits: np.ndarray) -> np.ndarray:
    """int64 index of the largest value of each row (rows flattened; the first one on ties)."""
    return logits.reshape(len(logits), -1).argmax(1).astype(np.int64)


def image_mode(channels: int) -> str:
    """The Pillow mode that decodes an image file to ``channels`` channels."""
    modes = {1: "L", 3: "RGB"}
    if channels not in modes:
        raise ValueError(f"image files give 1 (L) or 3 (RGB) channels; this model takes {channels}")
    return modes[channels]


def decode_image(data_or_path, mode: str, name: str = "image") -> np.ndarray:
    """uint8 (H, W) or (H, W, C) pixels of one encoded image (bytes, or a file path), converted to ``mode``."""
    import io

    from PIL import Image, UnidentifiedImageError

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray, memoryview)) else data_or_path
    try:
        with Image.open(src) as im:
            return np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{name}: cannot decode the image ({exc})") from exc


def list_images(folder) -> list:
    """Absolute paths of the image files under ``folder`` (subfolders too), sorted."""
    folder = os.path.abspath(os.fspath(folder))
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]
    if not found:
        raise ValueError(f"input: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return sorted(found)


class Source:
    """The rows of one input: ``total`` rows; ``kind`` is ``npy``, ``images`` or ``parquet``;
    ``batches(n)`` yields ``(ids, values)`` of up to n rows: the identifying columns (a dict of
    arrays) and the image column (see :func:`to_model_input`)."""

    def __init__(self, kind: str, total: int, batches):
        self.kind, self.total, self.batches = kind, int(total), batches


def input_kind(path) -> str:
    """``images`` (a folder), ``npy`` or ``parquet`` (by extension) for an input path
    (FileNotFoundError when it does not exist)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"input: {path} does not exist")
    if os.path.isdir(path):
        return "images"
    if path.endswith(".npy"):
        return "npy"
    if path.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"input: expected a .npy file, a .parquet file or a folder of images, got {path!r}")


def open_source(path, input_shape, column: str = "image") -> Source:
    """The rows of ``path`` (see the module docstring); ``column`` names a parquet input's image column."""
    path = os.fspath(path)
    kind = input_kind(path)
    if kind == "npy":
        arr = np.load(path, mmap_mode="r")
        if arr.ndim < 2:
            raise ValueError(f"input: {path} holds an array of shape {arr.shape}; expected one image per row")

        def batches(n):
            for i in range(0, len(arr), n):
                yield {"row": np.arange(i, min(i + n, len(arr)), dtype=np.int64)}, np.asarray(arr[i:i + n])
        return Source(kind, len(arr), batches)
    if kind == "images":
        files = list_images(path)
        mode = image_mode(input_shape[0])

        def batches(n):
            for i in range(0, len(files), n):
                names = files[i:i + n]
                yield {"path": np.array(names, dtype=object)}, [decode_image(f, mode, f) for f in names]
        return Source(kind, len(files), batches)
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    if column not in names:
        raise ValueError(f"column: {column!r} is not a column of {path} (columns: {', '.join(names)})")
    check_output_columns(names, f"input: {path}")
    def batches(n):
        for rb in f.iter_batches(batch_size=n):
            ids = {name: rb.column(name) for name in names if name != column}
            yield ids, arrow_rows(rb.column(column), column)
    return Source(kind, f.metadata.num_rows, batches)


def arrow_rows(col, name: str = "image"):
    """The rows of a pyarrow array as NumPy, for :func:`to_model_input` and for reading predictions
    back: a list of bytes (a binary column: encoded images), or an (N, values) array of each row's
    numbers flattened (a list column, nested or not, or a Ray tensor column)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(col.type, pa.ExtensionType):  # e.g. Ray Data's tensor columns
        col = col.storage
    if col.null_count:
        raise ValueError(f"{name}: {col.null_count} empty (null) rows")
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        return col.to_pylist()  # encoded images: to_model_input decodes them
    n = len(col)
    while pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        lengths = pc.list_value_length(col)
        if n and pc.min(lengths).as_py() != pc.max(lengths).as_py():
            raise ValueError(f"{name}: rows of different lengths; every row needs the same shape")
        col = pc.list_flatten(col)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise TypeError(f"{name}: expected one image per row (a list of numbers, a tensor column or encoded "
                        f"image bytes), got values of type {col.type}")
    return col.to_numpy(zero_copy_only=False).reshape(n, -1)


class PredictionWriter:
    """Writes predictions to one parquet file (the module docstring's output columns): to a
    temporary file next to ``path``, renamed to ``path`` by :meth:`close`."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.rows = 0
        self._tmp = f"{self.path}.tmp{os.getpid()}"
        self._writer = None

    def write(self, ids: dict, logits: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        n = len(logits)
        flat = np.ascontiguousarray(logits.reshape(n, -1), dtype=np.float32)
        cols = {k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v) for k, v in ids.items()}
        cols["logits"] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
        cols["top1"] = pa.array(top1(flat))
        table = pa.table(cols)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema)
        self._writer.write_table(table)
        self.rows += n

    def close(self) -> None:
        """Finish the file (an error if nothing was written: there is no schema to write)."""
        if self._writer is None:
            raise ValueError("output: no rows were written")
        self._writer.close()
        os.replace(self._tmp, self.path)

    def discard(self) -> None:
        """Drop the temporary file after a failure."""
        if self._writer is not None:
            self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)


class Progress:
    """A one-line progress bar on ``stream`` (stderr): rows done, percent, rows/s, time left;
    redrawn at most every ``interval`` seconds. ``total`` may be None (unknown)."""

    def __init__(self, total=None, unit: str = "images", enabled: bool = True, stream=None, interval: float = 0.5):
        self.total, self.unit, self.enabled = total, unit, enabled
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self.done = 0
        self._width = 0
        self.start = self._last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._draw(now, end="\r")

    def close(self) -> float:
        """Draw the final line; returns the seconds since the start."""
        now = time.perf_counter()
        if self.enabled:
            self._draw(now, end="\n")
        return now - self.start

    def _draw(self, now: float, end: str) -> None:
        dt = max(now - self.start, 1e-9)
        rate = self.done / dt
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            line = (f"[{bar:<30}] {self.done}/{self.total} {self.unit} {100 * frac:5.1f}%  {rate:.1f} {self.unit}/s"
                    f"  {dt:.0f}s elapsed, {left:.0f}s left")
        else:
            line = f"{self.done} {self.unit}  {rate:.1f} {self.unit}/s  {dt:.0f}s elapsed"
        self._width = max(self._width, len(line))
        self.stream.write(line.ljust(self._width) + end)
        self.stream.flush()


def run_local(model, source: Source, writer: PredictionWriter, batch_size: int = 256, mean=0.0, std=1.0,
              progress: Progress | None = None) -> int:
    """Score every row of ``source`` with ``model`` in this process, ``batch_size`` rows at a time;
    returns the number of rows."""
    for ids, values in source.batches(batch_size):
        x = to_model_input(values, model.input_shape, mean, std)
        writer.write(ids, model(x, batch_size=len(x)))
        if progress is not None:
            progress.update(len(x))
    return writer.rows
