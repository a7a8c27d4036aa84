"""Batch inference over large datasets with Ray Data (docs/scale-out.md).

Needs the ``ray`` extra (``pip install "lowbit[ray]"``: Ray Data, pyarrow, Pillow). ``import lowbit``
never imports Ray: this module loads on first use of ``lowbit.ray`` or ``import lowbit.ray``.

* :class:`Predictor`: a callable class for ``ray.data.Dataset.map_batches``. Each actor loads the
  model once, sets lowbit's threads to the CPUs Ray gave the actor, and adds two columns to every
  batch: ``logits`` (float32, one model output row per row: exactly ``model(x)`` for that row) and
  ``top1`` (int64).
* :func:`predict`: ``predict(dataset, model, column="image")`` runs a :class:`Predictor` actor pool.
* :func:`run_job`: what ``lowbit run --ray`` runs: a file or folder in, one parquet file out.

The image column follows :func:`lowbit.scoring.to_model_input`: float32 (C, H, W) rows in the
model's input layout (or those values flattened), or uint8 (H, W[, C]) images, scaled by
``(pixel / 255 - mean) / std``. Workers import lowbit: install it on every node.
"""
from __future__ import annotations

import logging
import os

import numpy as np

try:
    import ray
    import ray.data
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("lowbit.ray needs Ray Data: pip install 'lowbit[ray]' (or pip install 'ray[data]')") from exc

from ..runtime import io
from ..runtime.model import Model
from . import scoring

__all__ = ["Predictor", "load_model", "predict", "run_job"]


def load_model(model) -> Model:
    """A :class:`lowbit.Model` from a Model, the bytes of a model file (as :func:`lowbit.io.to_bytes`
    writes them), a ``ray.ObjectRef`` to those bytes, or a path to a ``.lowbit`` file readable
    where this runs. Raises :class:`lowbit.io.LowbitFormatError` on a bad file."""
    if isinstance(model, ray.ObjectRef):
        model = ray.get(model)
    if isinstance(model, Model):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return io.from_bytes(model, source="model bytes")
    if isinstance(model, (str, os.PathLike)):
        return io.load(model)
    raise TypeError(f"model: expected a lowbit.Model, model file bytes, an ObjectRef to them or a path to a "
                    f".lowbit file, got {type(model).__name__}")


def _assigned_cpus() -> int:
    """CPUs Ray reserved for this actor or task, rounded down (at least 1); 0 outside Ray or
    when none were reserved (then lowbit's default applies: the CPUs in the affinity mask)."""
    try:
        cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return 0
    return max(1, int(cpus)) if cpus > 0 else 0


class Predictor:
    """``ds.map_batches(Predictor, fn_constructor_args=(model,), batch_format="numpy", ...)``.

    ``model``: anything :func:`load_model` takes; a path is read on each actor's node (shared
    storage), an ObjectRef from the object store. ``column``: the image column (module docstring).
    ``num_threads``: lowbit threads per actor; default: the CPUs Ray reserved for the actor
    (``num_cpus`` of map_batches). ``mean``/``std``: scaling of uint8 images (one number or one per
    channel). Batches come in and go out as ``dict[str, numpy.ndarray]``; the input columns are
    kept (the image column too unless ``keep_image=False``), ``logits`` and ``top1`` are added (a
    batch that already has them is an error)."""

    def __init__(self, model, *, column: str = "image", num_threads: int | None = None, mean=0.0, std=1.0,
                 keep_image: bool = True):
        import lowbit

        self.model = load_model(model)
        self.column = column
        self.keep_image = keep_image
        self.mean, self.std = mean, std
        lowbit.set_num_threads(int(num_threads) if num_threads else _assigned_cpus())

    def __call__(self, batch: dict) -> dict:
        if self.column not in batch:
            raise KeyError(f"column: {self.column!r} is not in the batch (columns: {', '.join(batch)})")
        scoring.check_output_columns(batch, "the batch")
        x = scoring.to_model_input(batch[self.column], self.model.input_shape, self.mean, self.std, self.column)
        logits = self.model(x, batch_size=len(x))
        out = {k: v for k, v in batch.items() if self.keep_image or k != self.column}
        out["logits"] = logits
        out["top1"] = scoring.top1(logits)
        return out


def _actor_pool(concurrency):
    """ActorPoolStrategy for ``concurrency``: None (autoscaling from 1 actor to what the cluster
    fits), n (a fixed pool of n actors) or (min, max) (autoscaling between them)."""
    if concurrency is None:
        return ray.data.ActorPoolStrategy(min_size=1, max_size=None)
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return ray.data.ActorPoolStrategy(size=concurrency)
    if (isinstance(concurrency, tuple) and len(concurrency) == 2 and all(isinstance(v, int) for v in concurrency)
            and 1 <= concurrency[0] <= concurrency[1]):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    raise ValueError(f"concurrency: expected None, an int >= 1 or a (min, max) tuple of ints, got {concurrency!r}")


def _model_bytes(model) -> bytes:
    """The file bytes of ``model`` (a Model or a path), checked here so a bad file fails before
    any actor starts."""
    if isinstance(model, Model):
        return io.to_bytes(model)
    if isinstance(model, (str, os.PathLike)):
        with open(model, "rb") as f:
            data = f.read()
        io.from_bytes(data, source=os.fspath(model))  # raises LowbitFormatError naming the file
        return data
    raise TypeError(f"model: expected a path to a .lowbit file or a lowbit.Model, got {type(model).__name__}")


def predict(dataset, model, *, column: str = "image", batch_size: int = 256, concurrency=None,
            num_cpus: float = 1, mean=0.0, std=1.0, keep_image: bool = True):
    """``dataset`` with ``logits`` and ``top1`` added to every row (lazy, like every Ray Data op).

    ``model``: a path to a ``.lowbit`` file (read and checked here, then shipped through the object
    store: workers need no access to it) or a :class:`lowbit.Model`. ``column``: one image per row
    (float32 (C, H, W) in the model's input layout, or uint8 images scaled by ``mean``/``std``;
    see :func:`lowbit.scoring.to_model_input`). ``batch_size``: rows per model call.
    ``concurrency``: actors (None: autoscale to the cluster; n; or (min, max)). ``num_cpus``: CPUs
    reserved per actor, which is also its lowbit thread count (docs/scale-out.md on sizing).
    ``keep_image=False`` leaves the image column out of the result: less data to move when only the
    predictions are needed (a later ``drop_columns`` would be a separate stage that needs CPUs of
    its own, which a pool using every CPU starves until the end)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    compute = _actor_pool(concurrency)
    model_ref = ray.put(_model_bytes(model))
    return dataset.map_batches(Predictor, fn_constructor_args=(model_ref,),
                               fn_constructor_kwargs={"column": column, "mean": mean, "std": std,
                                                      "keep_image": keep_image},
                               batch_size=batch_size, batch_format="numpy", compute=compute, num_cpus=num_cpus)


def read_dataset(path, input_shape, column: str = "image", block_rows: int = 256):
    """``(dataset, image column, kind)`` for an input of ``lowbit run`` (lowbit.scoring.input_kind).
    Parquet files and image folders are read by the cluster's workers (the path must be readable
    on every node, e.g. shared storage); a ``.npy`` file is read here and put in the object store
    in blocks of ``block_rows`` rows."""
    kind = scoring.input_kind(path)
    path = os.fspath(path)
    if kind == "npy":
        arr = np.load(path, mmap_mode="r")
        blocks = [np.ascontiguousarray(arr[i:i + block_rows]) for i in range(0, len(arr), block_rows)]
        return ray.data.from_numpy(blocks), "data", kind
    if kind == "images":
        scoring.list_images(path)  # fails early, with the same message, on a folder without images
        ds = ray.data.read_images(os.path.abspath(path), mode=scoring.image_mode(input_shape[0]), include_paths=True,
                                  file_extensions=list(scoring.IMAGE_EXTENSIONS))
        return ds, "image", kind
    return ray.data.read_parquet(path), column, kind


def run_job(model_path, input_path, output, *, address=None, column: str = "image", batch_size: int = 256,
            concurrency=None, num_cpus: float = 1, mean=0.0, std=1.0, progress: bool = True) -> dict:
    """``lowbit run MODEL --input INPUT --output OUT.parquet --ray [ADDRESS]``: score every row of
    ``input_path`` on a Ray cluster and write the same parquet file as the local command (rows in
    input order). ``address``: None or ``"local"`` starts a local cluster for this job and stops it
    at the end (or joins the cluster ``RAY_ADDRESS`` names); else the address of a running cluster
    (``host:port``, ``ray://host:10001``, or ``auto``: the one started on this machine by
    ``ray start``). Returns ``{"rows", "seconds"}``."""
    model = io.load(model_path)
    started_here = not ray.is_initialized()
    if started_here:
        if address in (None, "local"):  # "local" makes Ray start a cluster, not join a running one
            address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    try:
        ctx.execution_options.preserve_order = True  # the output rows follow the input, as locally
        ctx.enable_progress_bars = False             # ours is the one progress bar
        ds, col, kind = read_dataset(input_path, model.input_shape, column, block_rows=batch_size)
        if kind == "parquet":
            scoring.check_output_columns(ds.schema().names, f"input: {input_path}")
        total = ds.count() if kind != "images" else len(scoring.list_images(input_path))
        scored = predict(ds, model, column=col, batch_size=batch_size, concurrency=concurrency,
                         num_cpus=num_cpus, mean=mean, std=std, keep_image=False)
        writer = scoring.PredictionWriter(output)
        bar = scoring.Progress(total, enabled=progress)
        try:
            for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
                logits = np.concatenate([scoring.arrow_rows(c, "logits") for c in batch.column("logits").chunks])
                ids = {name: batch.column(name) for name in batch.column_names if name not in scoring.OUTPUT_COLUMNS}
                if kind == "npy":
                    ids = {"row": np.arange(writer.rows, writer.rows + len(logits), dtype=np.int64)}
                writer.write(ids, logits)
                bar.update(len(logits))
            seconds = bar.close()
            writer.close()
        except BaseException:
            writer.discard()
            raise
        return {"rows": writer.rows, "seconds": seconds}
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        if started_here:
            ray.shutdown()

