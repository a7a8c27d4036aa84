"""lowbit.ray on a real single-node Ray cluster that this module starts (2 CPUs, a 100 MB object
store) and shuts down: predictions bit-exact against the model run row by row, none missing or
duplicated; threads per actor; a corrupt model fails fast with the loader's error; `lowbit run --ray`.
The multi-node tests (a worker node killed mid-job) are in test_ray_cluster.py (slow)."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit
from conftest import deadline, optional_import
from lowbit.io import LowbitFormatError

ray = optional_import("ray")
pq = optional_import("pyarrow.parquet")
import lowbit.ray as lowbit_ray  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHAPE = (1, 28, 28)
JOB_SECONDS = 180  # a bound for one small job on a loaded 2-core machine (they take 5-15 s)


@pytest.fixture(scope="module")
def cluster():
    """The address of a local Ray cluster for this module."""
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, logging_level=logging.WARNING)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers do not import test modules
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _rows_one_by_one(m, x):
    return np.concatenate([m(x[i:i + 1]) for i in range(len(x))])


def _dataset(x, blocks=6, column="image"):
    return ray.data.from_items([{"id": i, column: x[i]} for i in range(len(x))], override_num_blocks=blocks)


def _check_complete_and_exact(rows, x, want, column="image"):
    ids = [int(r["id"]) for r in rows]
    assert sorted(ids) == list(range(len(x))), "rows missing or duplicated"
    by_id = {int(r["id"]): r for r in rows}
    got = np.stack([by_id[i]["logits"] for i in range(len(x))])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert [int(by_id[i]["top1"]) for i in range(len(x))] == want.argmax(1).tolist()
    if column is None:  # keep_image=False
        assert set(rows[0]) == {"id", "logits", "top1"}
        return
    for i in (0, len(x) - 1):  # the input column is kept
        np.testing.assert_array_equal(by_id[i][column], x[i])


def test_import_lowbit_does_not_import_ray():
    code = ("import sys, lowbit; assert 'ray' not in sys.modules, 'ray imported'; "
            "lowbit.ray.predict; assert 'ray' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_predict_from_a_path_and_from_a_model_matches_a_local_loop(cluster, small_model_path):
    m = lowbit.load(small_model_path)
    x = np.random.default_rng(0).normal(size=(240, *SHAPE)).astype(np.float32)
    want = _rows_one_by_one(m, x)
    with deadline(JOB_SECONDS):
        rows = lowbit_ray.predict(_dataset(x), small_model_path, batch_size=32, concurrency=2).take_all()
    _check_complete_and_exact(rows, x, want)
    with deadline(JOB_SECONDS):  # a Model object (pickled through its file format), an autoscaling pool
        rows = lowbit_ray.predict(_dataset(x, 4), m, batch_size=100, concurrency=(1, 2)).take_all()
    _check_complete_and_exact(rows, x, want)


def test_predict_uint8_images(cluster, small_model_path):
    m = lowbit.load(small_model_path)
    u = np.random.default_rng(1).integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    x = lowbit.scoring.to_model_input(u, SHAPE, 0.286, 0.353)
    want = _rows_one_by_one(m, x)
    with deadline(JOB_SECONDS):
        rows = lowbit_ray.predict(_dataset(u, 3, "pixels"), m, column="pixels", batch_size=16, concurrency=1,
                                  mean=0.286, std=0.353).take_all()
    _check_complete_and_exact(rows, u, want, "pixels")
    with deadline(JOB_SECONDS):
        rows = lowbit_ray.predict(_dataset(u, 3, "pixels"), m, column="pixels", batch_size=16, concurrency=1,
                                  mean=0.286, std=0.353, keep_image=False).take_all()
    _check_complete_and_exact(rows, u, want, None)


class ThreadProbe(lowbit_ray.Predictor):
    """A Predictor that also reports lowbit's thread count inside its actor."""

    def __call__(self, batch):
        out = super().__call__(batch)
        out["threads"] = np.full(len(out["top1"]), lowbit.get_num_threads())
        return out


@pytest.mark.parametrize("cpus", [1, 2])
def test_actor_threads_follow_its_cpu_allocation(cluster, small_model_path, cpus):
    x = np.zeros((8, *SHAPE), np.float32)
    with deadline(JOB_SECONDS):
        rows = _dataset(x, 2).map_batches(ThreadProbe, fn_constructor_args=(str(small_model_path),),
                                          batch_format="numpy", num_cpus=cpus,
                                          compute=ray.data.ActorPoolStrategy(size=1)).take_all()
    assert {int(r["threads"]) for r in rows} == {cpus}


def test_predict_argument_errors(cluster, small_model_path):
    ds = _dataset(np.zeros((2, *SHAPE), np.float32), 1)
    with pytest.raises(ValueError, match="concurrency: expected"):
        lowbit_ray.predict(ds, small_model_path, concurrency=0)
    with pytest.raises(ValueError, match="batch_size: expected"):
        lowbit_ray.predict(ds, small_model_path, batch_size=0)
    with pytest.raises(TypeError, match="model: expected a path"):
        lowbit_ray.predict(ds, 42)
    with deadline(JOB_SECONDS), pytest.raises(Exception, match="column: 'pixels' is not in the batch"):
        lowbit_ray.predict(ds, small_model_path, column="pixels", concurrency=1).take_all()


def test_corrupt_model_fails_fast_with_the_loaders_error(cluster, small_model_path, tmp_path):
    bad = bytearray(small_model_path.read_bytes())
    bad[len(bad) // 2] ^= 0x10
    bad_path = tmp_path / "bad.lowbit"
    bad_path.write_bytes(bad)
    ds = _dataset(np.zeros((20, *SHAPE), np.float32), 4)
    # predict() reads the file on the driver: the error comes before any actor starts
    with pytest.raises(LowbitFormatError, match="bad.lowbit: checksum mismatch"):
        lowbit_ray.predict(ds, bad_path)
    # a path given to the Predictor is read by each actor: the job fails, with the loader's
    # message, instead of restarting actors forever
    with deadline(JOB_SECONDS), pytest.raises(ray.exceptions.RayError) as info:
        ds.map_batches(lowbit_ray.Predictor, fn_constructor_args=(str(bad_path),), batch_format="numpy",
                       compute=ray.data.ActorPoolStrategy(size=2)).take_all()
    assert "LowbitFormatError" in str(info.value) and "bad.lowbit: checksum mismatch" in str(info.value)
    # lowbit run --ray checks the file before it starts or joins a cluster
    np.save(tmp_path / "x.npy", np.zeros((2, *SHAPE), np.float32))
    r = subprocess.run([sys.executable, "-m", "lowbit", "run", str(bad_path), "--input", str(tmp_path / "x.npy"),
                        "--output", str(tmp_path / "o.parquet"), "--ray"], capture_output=True, text=True, cwd=REPO,
                       timeout=JOB_SECONDS)
    assert r.returncode != 0 and "lowbit run: " in r.stderr and "bad.lowbit: checksum mismatch" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o.parquet").exists()


def test_cli_run_ray_on_a_running_cluster_equals_the_local_run(cluster, small_model_path, tmp_path):
    x = np.random.default_rng(2).normal(size=(90, *SHAPE)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    outs = {}
    for name, extra in (("local", []), ("ray", ["--ray", cluster])):
        outs[name] = tmp_path / f"{name}.parquet"
        r = subprocess.run([sys.executable, "-m", "lowbit", "run", str(small_model_path), "--input",
                            str(tmp_path / "x.npy"), "--output", str(outs[name]), "--batch-size", "16", *extra],
                           capture_output=True, text=True, cwd=REPO, timeout=JOB_SECONDS)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "90 rows in" in r.stdout and "90/90 images 100.0%" in r.stderr
    local, remote = pq.read_table(outs["local"]), pq.read_table(outs["ray"])
    assert remote.equals(local) and local.column("row").to_pylist() == list(range(90))
