"""Data-parallel (DDP) and sharded (FSDP2) training under a real `torchrun` with 2 CPU processes
(gloo): the same global batch gives the same losses as one process, a sharded run's step
checkpoints are one shard per rank and resume at 2 ranks or 1, and its final export is the same
model in the Hugging Face layout."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cwm.model import load_pretrained
from cwm.train.bytedata import write_byte_dataset
from cwm.train.logging import read_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    files = sorted((ROOT / "src/cwm/model").glob("*.py"))
    train = write_byte_dataset(root / "train", [f.read_bytes() for f in files], seq_len=33)
    path = root / "run.toml"
    path.write_text(
        f'[model]\noverrides = {{vocab_size = 257, n_layers = 2}}\n[data]\ntrain = ["{train}"]\n'
        "[train]\ndevice = \"cpu\"\nmax_steps = 6\nglobal_batch_size = 8\nmicro_batch_size = 2\n"  # 2 ranks x 2 accumulation
        "[checkpoint]\nevery = 3\n"
        "[optim]\nlr = 3e-3\n[schedule]\nwarmup_steps = 2\n[log]\nconsole = false\ntensorboard = false\n"
    )
    return path


def train(run_config, out_dir, nproc, *overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [*launcher, "-m", "cwm", "train", "--config", str(run_config), f"train.out_dir='{out_dir}'", *overrides]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return {r["step"]: r["loss"] for r in read_jsonl(out_dir / "metrics.jsonl")}, result.stderr


@pytest.fixture(scope="module")
def single(run_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    losses, log = train(run_config, out, 1, "log.console=true")
    assert "single process, 1 rank(s) on cpu: 100% of" in log and "4 micro-batch(es) of 2" in log
    return losses, out


@pytest.mark.parametrize("parallel, mode, share", [("ddp", "DDP", "100%"), ("fsdp", "FSDP2", "50%")])
def test_two_processes_match_one(run_config, single, tmp_path, parallel, mode, share):
    single, single_dir = single
    double, log = train(run_config, tmp_path / parallel, 2, f"train.parallel='{parallel}'", "log.console=true")
    # really sharded under FSDP2 (each rank holds half of the parameters), replicated under DDP
    assert f"{mode}, 2 rank(s) on cpu: {share} of" in log and "2 micro-batch(es) of 2 per rank" in log, log
    assert sorted(double) == list(range(1, 7))
    assert double == pytest.approx(single, abs=2e-5)
    assert single[6] < single[1]  # it trains
    a, b = (
        load_pretrained(single_dir / "final").state_dict(),
        load_pretrained(tmp_path / parallel / "final").state_dict(),
    )
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    if parallel == "fsdp":
        # the step checkpoint is one shard per rank (DCP), no whole model anywhere
        step3 = tmp_path / parallel / "checkpoints/step_00000003"
        assert sorted(p.name for p in (step3 / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert not list(step3.glob("*.safetensors"))
        # resume the sharded run from its step-3 checkpoint: the same steps 4-6 again
        shutil.copytree(tmp_path / parallel, tmp_path / "one")
        again, log = train(run_config, tmp_path / parallel, 2, "train.parallel='fsdp'", "log.console=true", "--resume")
        assert "resumed from" in log and sorted(again) == list(range(1, 7))
        assert again == pytest.approx(double, abs=1e-6)
        # and in one process: DCP reshards the two ranks' shards
        alone, log = train(run_config, tmp_path / "one", 1, "log.console=true", "--resume")
        assert "resumed from" in log and alone == pytest.approx(double, abs=2e-5)
