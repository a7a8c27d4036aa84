"""lowbit.ray on a multi-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head with no
CPUs, so all work runs on the worker nodes, and two 1-CPU worker nodes, all on loopback), started
and shut down by this module. Slow (about 2-3 minutes on 2 cores: each node is a set of
processes); in the default suite all the same, as the issue asked (CI has the time).
Alone: PYTHONPATH=python python3 -m pytest tests/python/test_ray_cluster.py -q
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import lowbit
from conftest import deadline, optional_import

ray = optional_import("ray")
pq = optional_import("pyarrow.parquet")
Image = optional_import("PIL.Image")
import lowbit.ray as lowbit_ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHAPE = (1, 28, 28)
MB = 2**20
NODE = dict(num_cpus=1, object_store_memory=80 * MB)
JOB_SECONDS = 300


@pytest.fixture(scope="module")
def cluster():
    # a killed node is declared dead after ~3 missed 1 s health checks (default: 5 of 3 s)
    c = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, object_store_memory=80 * MB, include_dashboard=False,
        _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 3}))
    try:
        for _ in range(2):
            c.add_node(**NODE)
        c.wait_for_nodes()
        ray.init(address=c.address, logging_level=logging.WARNING)
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers do not import test modules
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.wait_for_min_actors_s = JOB_SECONDS  # every actor of a pool is up before the work starts
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


class NodeProbe(lowbit_ray.Predictor):
    """A Predictor that also records the node its actor runs on."""

    def __call__(self, batch):
        out = super().__call__(batch)
        out["node"] = np.array([ray.get_runtime_context().get_node_id()] * len(out["top1"]))
        return out


def _rows_one_by_one(m, x):
    return np.concatenate([m(x[i:i + 1]) for i in range(len(x))])


def _dataset(x, blocks):
    return ray.data.from_items([{"id": i, "image": x[i]} for i in range(len(x))], override_num_blocks=blocks)


def _by_id(batches, n):
    """{id: logits} from the batches, failing on a duplicate id."""
    got = {}
    for b in batches:
        for i, logits in zip(b["id"].tolist(), b["logits"]):
            assert i not in got, f"row {i} delivered twice"
            got[i] = logits
    return got


def test_two_worker_nodes_share_the_job_and_match_a_local_loop(cluster, small_model_path):
    m = lowbit.load(small_model_path)
    x = np.random.default_rng(0).normal(size=(400, *SHAPE)).astype(np.float32)
    blob = ray.put(small_model_path.read_bytes())
    with deadline(JOB_SECONDS):
        rows = _dataset(x, 16).map_batches(NodeProbe, fn_constructor_args=(blob,), batch_size=25,
                                           batch_format="numpy", num_cpus=1,
                                           compute=ray.data.ActorPoolStrategy(size=2)).take_all()
    workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU")}
    assert {r["node"] for r in rows} == workers and len(workers) == 2
    got = _by_id([{"id": np.array([r["id"] for r in rows]), "logits": [r["logits"] for r in rows]}], len(x))
    assert sorted(got) == list(range(len(x)))
    np.testing.assert_array_equal(np.stack([got[i] for i in range(len(x))]), _rows_one_by_one(m, x))


def test_a_worker_node_killed_mid_job_leaves_the_job_complete_and_exact(cluster, small_model_path):
    """A third worker node joins, runs part of the job, and is killed (SIGKILL, no drain) after the
    first batch arrives: Ray restarts its actor's tasks elsewhere and rebuilds the lost blocks."""
    m = lowbit.load(small_model_path)
    n = 3000
    x = np.random.default_rng(1).normal(size=(n, *SHAPE)).astype(np.float32)
    want = _rows_one_by_one(m, x)
    doomed = cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    batches, seen_at_kill = [], None
    with deadline(JOB_SECONDS):
        scored = lowbit_ray.predict(_dataset(x, 30), small_model_path, batch_size=50, concurrency=3, keep_image=False)
        for b in scored.iter_batches(batch_size=None, batch_format="numpy"):
            batches.append(b)
            if seen_at_kill is None:
                seen_at_kill = sum(len(b["id"]) for b in batches)
                cluster.remove_node(doomed, allow_graceful=False)
    assert seen_at_kill < n, "the node was killed after the job had finished"
    assert not any(nd["Alive"] for nd in ray.nodes() if nd["NodeID"] == doomed.node_id)
    got = _by_id(batches, n)
    assert sorted(got) == list(range(n)), "rows missing"
    np.testing.assert_array_equal(np.stack([got[i] for i in range(n)]), want)


def test_corrupt_model_fails_the_cluster_job_with_the_loaders_error(cluster, small_model_path, tmp_path):
    bad = bytearray(small_model_path.read_bytes())
    bad[-10] ^= 0x01
    (tmp_path / "bad.lowbit").write_bytes(bad)
    with deadline(JOB_SECONDS), pytest.raises(ray.exceptions.RayError) as info:
        _dataset(np.zeros((40, *SHAPE), np.float32), 8).map_batches(
            lowbit_ray.Predictor, fn_constructor_args=(str(tmp_path / "bad.lowbit"),), batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=2)).take_all()
    assert "LowbitFormatError" in str(info.value) and "checksum mismatch" in str(info.value)


def _run_cli(model, folder, out, *extra, env=None):
    r = subprocess.run([sys.executable, "-m", "lowbit", "run", str(model), "--input", str(folder), "--output",
                        str(out), "--mean", "0.286", "--std", "0.353", "--batch-size", "8", *extra],
                       capture_output=True, text=True, cwd=REPO, timeout=JOB_SECONDS, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return pq.read_table(out)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    images = np.random.default_rng(2).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


def test_cli_run_ray_on_the_cluster_equals_the_local_run(cluster, small_model_path, image_folder, tmp_path):
    local = _run_cli(small_model_path, image_folder, tmp_path / "local.parquet")
    remote = _run_cli(small_model_path, image_folder, tmp_path / "ray.parquet", "--ray", cluster.address)
    assert remote.equals(local) and local.num_rows == 60
    assert local.column("path").to_pylist() == sorted(str(p) for p in image_folder.iterdir())


def test_cli_run_ray_starts_a_local_cluster_on_demand(small_model_path, image_folder, tmp_path):
    local = _run_cli(small_model_path, image_folder, tmp_path / "local.parquet")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not the module's cluster
    env["RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION"] = "0.01"  # a small object store: a few hundred MB
    remote = _run_cli(small_model_path, image_folder, tmp_path / "ray.parquet", "--ray", env=env)
    assert remote.equals(local)
