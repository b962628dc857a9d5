"""The same build as Ray tasks (a local Ray instance) gives the same records as one machine."""

import json

import pyarrow.parquet as pq
import pytest

from cwm.data.build import BuildParams, build

ray = pytest.importorskip("ray")


def records(out):
    manifest = json.loads((out / "manifest.json").read_text())
    rows = [row for name in sorted(manifest["shards"]) for row in pq.read_table(out / name).to_pylist()]
    return [(r["index"], r["id"], r["status"], r["cwm_text"]) for r in rows]


def test_ray_build_equals_the_local_build(tmp_path):
    params = BuildParams(source="synth", n=16, seed=4, shard_size=4, max_events=2000, timeout=5.0, decontaminate=())
    build(tmp_path / "local", params, workers=1, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        build(tmp_path / "ray", params, workers=2, ray="local", progress=False)  # uses the running instance
    finally:
        ray.shutdown()
    assert records(tmp_path / "ray") == records(tmp_path / "local")
    assert len(records(tmp_path / "ray")) == 16
