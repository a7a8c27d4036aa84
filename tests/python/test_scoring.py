"""Offline scoring without Ray: Model pickling, the batch layout rule (lowbit.scoring.to_model_input),
and `lowbit run --output x.parquet` on .npy, parquet and image-folder inputs."""
import io
import os
import pickle
import subprocess

import numpy as np
import pytest

import lowbit
from conftest import optional_import, python_command, small_model
from lowbit import scoring
from lowbit.datasets import scale_pixels
from lowbit.io import LowbitFormatError

pa = optional_import("pyarrow")
pq = optional_import("pyarrow.parquet")
Image = optional_import("PIL.Image")

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHAPE = (1, 28, 28)


def _lowbit(*args, ok=True):
    r = subprocess.run([*python_command(), "-m", "lowbit", *map(str, args)], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert (r.returncode == 0) == ok, f"lowbit {' '.join(map(str, args))}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _rows_one_by_one(m, x):
    """The reference: the model run on each row alone."""
    return np.concatenate([m(x[i:i + 1]) for i in range(len(x))])


def test_model_pickles_through_its_file_format(small_model_path):
    m = lowbit.load(small_model_path)
    x = np.random.default_rng(0).normal(size=(5, *SHAPE)).astype(np.float32)
    y = m(x)  # runs first: caches and recorded kernels must not break pickling
    blob = pickle.dumps(m)
    assert lowbit.io.to_bytes(m) in blob
    m2 = pickle.loads(blob)
    assert isinstance(m2, lowbit.Model) and m2.graph() == m.graph()
    np.testing.assert_array_equal(m2(x), y)
    # unpickling runs the loader's checks: a damaged payload is refused
    bad = blob.replace(lowbit.io.to_bytes(m)[-40:], bytes(40))
    with pytest.raises(LowbitFormatError, match="checksum"):
        pickle.loads(bad)


def test_to_model_input_float_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, *SHAPE)).astype(np.float32)
    np.testing.assert_array_equal(scoring.to_model_input(x, SHAPE), x)
    np.testing.assert_array_equal(scoring.to_model_input(x.reshape(4, -1), SHAPE), x)       # flattened rows
    np.testing.assert_array_equal(scoring.to_model_input(list(x), SHAPE), x)                 # a list of rows
    np.testing.assert_array_equal(scoring.to_model_input(x.astype(np.float64), SHAPE), x)    # cast to float32
    obj = np.empty(4, dtype=object)
    obj[:] = list(x)
    np.testing.assert_array_equal(scoring.to_model_input(obj, SHAPE), x)                     # Ray's ragged form


def test_to_model_input_uint8_images_and_bytes():
    rng = np.random.default_rng(2)
    u = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    want = scale_pixels(np.ascontiguousarray(u.transpose(0, 3, 1, 2)), mean, std)
    got = scoring.to_model_input(u, (3, 28, 28), mean, std)
    assert got.shape == (3, 3, 28, 28) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # by hand: channel 1 of image 2 at (5, 7)
    assert got[2, 1, 5, 7] == np.float32((np.float32(u[2, 5, 7, 1]) * np.float32(1 / 255) - np.float32(0.4))
                                         / np.float32(0.25))
    gray = u[..., 0]
    np.testing.assert_array_equal(scoring.to_model_input(gray, SHAPE), scale_pixels(gray[:, None]))
    pngs = []
    for img in gray:
        b = io.BytesIO()
        Image.fromarray(img).save(b, format="PNG")
        pngs.append(b.getvalue())
    np.testing.assert_array_equal(scoring.to_model_input(pngs, SHAPE), scale_pixels(gray[:, None]))


def test_to_model_input_errors_name_the_column():
    with pytest.raises(TypeError, match="pixels: expected float rows"):
        scoring.to_model_input(np.zeros((2, 1, 28, 28), np.int32), SHAPE, name="pixels")
    with pytest.raises(ValueError, match="image: float rows must be"):
        scoring.to_model_input(np.zeros((2, 27), np.float32), SHAPE)
    with pytest.raises(ValueError, match="uint8 rows are images .* C = 3"):
        scoring.to_model_input(np.zeros((2, 28, 28, 4), np.uint8), (3, 28, 28))
    with pytest.raises(ValueError, match="rows of different shapes"):
        scoring.to_model_input([np.zeros((1, 28, 28), np.float32), np.zeros((1, 20, 28), np.float32)], SHAPE)
    with pytest.raises(ValueError, match="empty batch"):
        scoring.to_model_input(np.zeros((0, 1, 28, 28), np.float32), SHAPE)
    with pytest.raises(ValueError, match="std: expected positive"):
        scoring.to_model_input(np.zeros((1, 28, 28), np.uint8), SHAPE, std=0.0)
    with pytest.raises(ValueError, match="mean: expected one number or 3"):
        scoring.to_model_input(np.zeros((1, 28, 28, 3), np.uint8), (3, 28, 28), mean=[0.1, 0.2])
    with pytest.raises(ValueError, match="cannot decode"):
        scoring.to_model_input([b"not an image"], SHAPE)


def _read(path):
    return pq.read_table(path)


def _logits(table):
    return np.stack(table.column("logits").to_numpy(zero_copy_only=False)).astype(np.float32)


def test_run_npy_to_parquet_matches_the_model_row_by_row(small_model_path, tmp_path):
    m = lowbit.load(small_model_path)
    x = np.random.default_rng(3).normal(size=(70, *SHAPE)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = _lowbit("run", small_model_path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.parquet",
                "--batch-size", "32")
    assert "70 rows in" in r.stdout and "images/s" in r.stdout
    assert "70/70 images 100.0%" in r.stderr  # the progress bar's last line
    t = _read(tmp_path / "y.parquet")
    assert t.column_names == ["row", "logits", "top1"]
    assert t.schema.field("logits").type == pa.list_(pa.float32(), 10)
    assert t.column("row").to_pylist() == list(range(70))
    want = _rows_one_by_one(m, x)
    np.testing.assert_array_equal(_logits(t), want)
    np.testing.assert_array_equal(t.column("top1").to_numpy(), want.argmax(1))
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_run_parquet_columns_kept_and_image_folder(small_model_path, tmp_path):
    m = lowbit.load(small_model_path)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(45, *SHAPE)).astype(np.float32)
    table = pa.table({"key": np.arange(45) * 10, "name": [f"r{i}" for i in range(45)],
                      "pixels": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 28 * 28)})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=16)
    _lowbit("run", small_model_path, "--input", tmp_path / "in.parquet", "--column", "pixels",
            "--output", tmp_path / "out.parquet", "--batch-size", "20", "--no-progress")
    t = _read(tmp_path / "out.parquet")
    assert t.column_names == ["key", "name", "logits", "top1"]
    assert t.column("key").to_pylist() == list(range(0, 450, 10)) and t.column("name").to_pylist()[3] == "r3"
    np.testing.assert_array_equal(_logits(t), _rows_one_by_one(m, x))

    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    names = []
    for i, img in enumerate(images):
        name = folder / ("sub" if i % 4 == 0 else "") / f"img{i:02d}.png"
        Image.fromarray(img).save(name)
        names.append(str(name))
    (folder / "notes.txt").write_text("not an image")
    _lowbit("run", small_model_path, "--input", folder, "--output", tmp_path / "img.parquet",
            "--mean", "0.286", "--std", "0.353", "--batch-size", "5")
    t = _read(tmp_path / "img.parquet")
    order = np.argsort(names)
    assert t.column("path").to_pylist() == sorted(names)
    want = _rows_one_by_one(m, scale_pixels(images[:, None], 0.286, 0.353))[order]
    np.testing.assert_array_equal(_logits(t), want)


def test_run_rgb_jpeg_folder(tmp_path):
    optional_import("torch")
    m = small_model(in_channels=3)
    m.save(tmp_path / "rgb.lowbit")
    images = np.random.default_rng(5).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    (tmp_path / "jpg").mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / "jpg" / f"{i}.jpg", quality=90)
    _lowbit("run", tmp_path / "rgb.lowbit", "--input", tmp_path / "jpg", "--output", tmp_path / "o.parquet",
            "--mean", "0.5,0.4,0.3", "--std", "0.2,0.2,0.2")
    decoded = np.stack([np.asarray(Image.open(tmp_path / "jpg" / f"{i}.jpg").convert("RGB")) for i in range(4)])
    x = scale_pixels(decoded.transpose(0, 3, 1, 2), [0.5, 0.4, 0.3], 0.2)
    np.testing.assert_array_equal(_logits(_read(tmp_path / "o.parquet")), _rows_one_by_one(m, x))


def test_run_errors_are_clear(small_model_path, tmp_path):
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "t.parquet")
    r = _lowbit("run", small_model_path, "--input", tmp_path / "t.parquet", "--output", tmp_path / "o.parquet",
                ok=False)
    assert "lowbit run: column: 'image' is not a column of" in r.stderr and "columns: a" in r.stderr
    r = _lowbit("run", small_model_path, "--input", tmp_path / "t.parquet", "--output", tmp_path / "o.npy", ok=False)
    assert "--output ending in .parquet" in r.stderr
    (tmp_path / "empty").mkdir()
    r = _lowbit("run", small_model_path, "--input", tmp_path / "empty", "--output", tmp_path / "o.parquet", ok=False)
    assert "no image files" in r.stderr
    bad = bytearray(small_model_path.read_bytes())
    bad[60] ^= 1
    (tmp_path / "bad.lowbit").write_bytes(bad)
    np.save(tmp_path / "x.npy", np.zeros((2, *SHAPE), np.float32))
    r = _lowbit("run", tmp_path / "bad.lowbit", "--input", tmp_path / "x.npy", "--output", tmp_path / "o.parquet",
                ok=False)
    assert "checksum mismatch" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.parquet").exists()
