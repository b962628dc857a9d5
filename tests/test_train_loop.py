"""Real training runs of a tiny model on bytes of this repository's code: the loss falls, masks are
honoured, phases chain, checkpoints resume exactly after a real SIGKILL, evaluation hooks run."""

import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from cwm.cli import main as cwm_main
from cwm.data.packed import PackedWriter
from cwm.model import Transformer, get_preset, load_pretrained, save_pretrained
from cwm.train.bytedata import write_byte_dataset
from cwm.train.checkpoint import export_checkpoint, rng_state, step_checkpoints, step_path
from cwm.train.config import ConfigError, load_config
from cwm.train.data import make_batch
from cwm.train.logging import read_jsonl
from cwm.train.trainer import Trainer, register_eval_hook, token_loss_sum

ROOT = Path(__file__).resolve().parents[1]
TINY = "{vocab_size = 257, n_layers = 2}"  # byte vocabulary; 2 layers: one global, one sliding


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the 2-core machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def code_data(tmp_path_factory):
    """Byte-level packed rows of real Python source: the trainer's own files and the model's."""
    root = tmp_path_factory.mktemp("data")
    files = sorted((ROOT / "src/cwm/train").glob("*.py")) + sorted((ROOT / "src/cwm/model").glob("*.py"))
    docs = [f.read_bytes() for f in files]
    train = write_byte_dataset(root / "train", docs[:-2], seq_len=65)
    valid = write_byte_dataset(root / "valid", docs[-2:], seq_len=65)
    return train, valid


def config(code_data, out_dir, *overrides):
    train, valid = code_data
    return load_config(
        None,
        [
            f"model.overrides={TINY}",
            f"data.train=['{train}']",
            f"data.valid=['{valid}']",
            f"train.out_dir='{out_dir}'",
            "train.max_steps=30",
            "train.global_batch_size=8",
            "train.micro_batch_size=4",
            "optim.lr=3e-3",
            "schedule.warmup_steps=3",
            "eval.max_batches=2",
            "log.console=false",
            "train.device='cpu'",  # CPU tests, also on a machine with a GPU
            *overrides,
        ],
    )


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "loss" in r}


def test_smoke_run_learns_and_writes_a_complete_run_dir(code_data, tmp_path):
    cfg = config(code_data, tmp_path / "run", "eval.every=15", "checkpoint.every=10", "checkpoint.keep_last=1")
    last = Trainer(cfg).train()
    curve = losses(tmp_path / "run")
    assert sorted(curve) == list(range(1, 31))
    assert curve[1] > math.log(257) - 0.3  # starts near uniform over 257 bytes
    assert last["loss"] < curve[1] - 2.0 and last["val_loss"] < math.log(257) - 2.0  # really learns
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert [r["step"] for r in records if "val_loss" in r] == [15, 30]
    assert all(r["tokens_per_s"] > 0 and "lr" in r and "grad_norm" in r for r in records if "loss" in r)
    assert "mfu" not in records[0]  # CPU without a configured peak: MFU omitted
    # run dir: resolved config (loads back equal), TensorBoard events, kept checkpoints, final
    assert load_config(tmp_path / "run/config.toml") == cfg
    assert list((tmp_path / "run/tb").glob("events.out.tfevents.*"))
    assert [s for s, _ in step_checkpoints(tmp_path / "run")] == [20]  # keep_last=1; 30 is `final`
    final = load_pretrained(tmp_path / "run/final")
    assert final.cfg.n_layers == 2 and (tmp_path / "run/final/trainer_state.pt").is_file()


def test_mfu_is_logged_against_a_configured_peak(code_data, tmp_path):
    Trainer(
        config(code_data, tmp_path / "run", "train.max_steps=2", "log.peak_flops=1e12", "log.tensorboard=false")
    ).train()
    record = read_jsonl(tmp_path / "run/metrics.jsonl")[-2]
    flops = get_preset("cwm-tiny", vocab_size=257, n_layers=2).flops_per_token(64)
    assert record["mfu"] == pytest.approx(flops * record["tokens_per_s"] / 1e12)


def test_accumulation_and_activation_checkpointing_do_not_change_the_losses(code_data, tmp_path):
    runs = {
        "plain": ["train.micro_batch_size=8"],
        "accumulated": ["train.micro_batch_size=2"],
        "recomputed": ["train.micro_batch_size=4", "train.activation_checkpointing=true"],
    }
    curves = {}
    for name, extra in runs.items():
        Trainer(config(code_data, tmp_path / name, "train.max_steps=4", "log.tensorboard=false", *extra)).train()
        curves[name] = losses(tmp_path / name)
    for name in ("accumulated", "recomputed"):
        assert curves[name] == pytest.approx(curves["plain"], abs=1e-5), name


def test_bf16_autocast_trains_close_to_fp32(code_data, tmp_path):
    Trainer(config(code_data, tmp_path / "fp32", "train.max_steps=3", "log.tensorboard=false")).train()
    Trainer(
        config(code_data, tmp_path / "bf16", "train.max_steps=3", "log.tensorboard=false", "train.precision='bf16'")
    ).train()
    fp32, bf16 = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, abs=0.05)


def test_document_mask_makes_a_packed_row_equal_to_its_documents_apart():
    torch.manual_seed(0)
    model = Transformer(get_preset("cwm-tiny", vocab_size=257, n_layers=2))
    a, b = torch.randint(0, 256, (20,)), torch.randint(0, 256, (13,))
    ones = np.ones
    packed = make_batch(
        [{"tokens": np.concatenate([a, b]), "doc_ids": np.repeat([0, 1], [20, 13]), "loss_mask": ones(33)}]
    )
    alone = [
        make_batch([{"tokens": x.numpy(), "doc_ids": np.zeros(len(x)), "loss_mask": ones(len(x))}]) for x in (a, b)
    ]
    assert packed.num_targets == 19 + 12  # no target across the boundary
    together = token_loss_sum(model, packed)
    assert together.item() == pytest.approx(sum(token_loss_sum(model, x).item() for x in alone), rel=1e-5)


def test_sft_learns_only_the_masked_in_tokens(tmp_path):
    """SFT rows: a random 'user' turn (loss off) and a fixed 'assistant' answer (loss on). Only the
    answer is learnable; a trainer that counted the random turn could not get near 0."""
    rng = np.random.default_rng(0)
    answer = np.frombuffer(b"return x + 1\n", dtype=np.uint8)
    with PackedWriter(tmp_path / "sft", 33, 257) as w:
        for _ in range(64):
            user = rng.integers(0, 256, 33 - len(answer) - 1)
            w.add(np.r_[user, 256, answer], np.zeros(33), np.r_[np.zeros(33 - len(answer)), np.ones(len(answer))])
    cfg = load_config(
        None,
        [
            f"model.overrides={TINY}",
            f"data.train=['{tmp_path / 'sft'}']",
            f"train.out_dir='{tmp_path / 'run'}'",
            "train.max_steps=80",
            "train.global_batch_size=16",
            "train.micro_batch_size=16",
            "optim.lr=1e-2",
            "schedule.kind='constant'",
            "train.device='cpu'",
            "log.console=false",
            "log.tensorboard=false",
        ],
    )
    last = Trainer(cfg).train()
    assert last["targets"] == 16 * 13  # the 13 answer tokens of each of the 16 rows
    assert last["loss"] < 0.5  # far below the random turn's ln(256) = 5.5


def test_phases_chain_through_init_from_and_a_mismatch_is_refused(code_data, tmp_path):
    Trainer(config(code_data, tmp_path / "pretrain", "train.max_steps=3", "log.tensorboard=false")).train()
    sft = Trainer(config(code_data, tmp_path / "sft", f"model.init_from='{tmp_path / 'pretrain/final'}'"))
    expected = load_pretrained(tmp_path / "pretrain/final").state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in sft.module.state_dict().items() if k in expected)
    with pytest.raises(ConfigError, match="does not fit model preset"):
        Trainer(
            config(
                code_data,
                tmp_path / "x",
                f"model.init_from='{tmp_path / 'pretrain/final'}'",
                "model.overrides.n_layers=3",
            )
        )
    with pytest.raises(ConfigError, match="cannot load"):
        Trainer(config(code_data, tmp_path / "y", f"model.init_from='{tmp_path / 'nowhere'}'"))


def test_init_from_a_step_checkpoint_and_a_resume_does_not_read_init_from_again(code_data, tmp_path):
    once = ("train.max_steps=2", "checkpoint.every=1", "log.tensorboard=false")
    Trainer(config(code_data, tmp_path / "pre", *once)).train()
    step1 = step_path(tmp_path / "pre", 1)  # sharded (DCP): each rank would read only its shard
    sft = Trainer(config(code_data, tmp_path / "sft", f"model.init_from='{step1}'", *once))
    expected = load_pretrained(export_checkpoint(step1, tmp_path / "step1-hf")).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in sft.module.state_dict().items() if k in expected)
    sft.train()
    shutil.rmtree(tmp_path / "pre")  # gone: a resumed run takes its weights from its own checkpoint
    resumed = Trainer(config(code_data, tmp_path / "sft", f"model.init_from='{step1}'", *once), resume=True)
    assert resumed.step == 1


@register_eval_hook("probe")
def _probe(model, step):
    with torch.no_grad():
        logits = model(torch.zeros(1, 4, dtype=torch.long))
    return {"step_seen": step, "logit_mean": logits.mean().item()}


def test_eval_hooks_by_name_and_by_import_path(code_data, tmp_path):
    cfg = config(
        code_data,
        tmp_path / "run",
        "train.max_steps=4",
        "eval.every=2",
        "log.tensorboard=false",
        "eval.hooks=['probe', 'test_train_loop:_probe']",
    )
    Trainer(cfg).train()
    evals = [r for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "probe/step_seen" in r]
    assert [r["probe/step_seen"] for r in evals] == [2, 4]
    assert all(r["test_train_loop:_probe/step_seen"] == r["step"] for r in evals)
    with pytest.raises(ConfigError, match="unknown hook 'nope'"):
        Trainer(config(code_data, tmp_path / "x", "eval.hooks=['nope']"))


def _cli(cfg_path, out_dir, *extra):
    return [sys.executable, "-m", "cwm", "train", "--config", str(cfg_path), f"train.out_dir='{out_dir}'", *extra]


def test_resume_after_sigkill_gives_the_uninterrupted_losses(code_data, tmp_path):
    train, valid = code_data
    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text(
        f'[model]\noverrides = {TINY}\n[data]\ntrain = ["{train}"]\n'
        "[train]\ndevice = \"cpu\"\nmax_steps = 150\nglobal_batch_size = 8\nmicro_batch_size = 4\n"
        "[optim]\nlr = 3e-3\n[schedule]\nwarmup_steps = 3\n[checkpoint]\nevery = 5\nkeep_last = 2\n"
        "[log]\nconsole = false\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every run: same float sums
    whole = subprocess.run(_cli(cfg_path, tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr

    killed = subprocess.Popen(_cli(cfg_path, tmp_path / "killed"), env=env, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (tmp_path / "killed/checkpoints/step_00000010").exists():
        assert killed.poll() is None and time.time() < deadline, "the run ended before its first checkpoints"
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    cut = losses(tmp_path / "killed")
    assert 10 <= max(cut) < 150  # killed mid-way, after step 10's checkpoint

    resumed = subprocess.run(
        _cli(cfg_path, tmp_path / "killed", "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in read_jsonl(tmp_path / "killed/metrics.jsonl")]
    assert steps == list(range(1, 151))  # each step once: records past the checkpoint were dropped
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "killed")
    assert max(abs(expected[s] - got[s]) for s in expected) <= 1e-6


class _Payload:
    """An object whose unpickling would run code: here, create a file named `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _resume_fails(cfg_path, run_dir):
    """--resume of `run_dir`: exit 2 and one line (returned), no traceback."""
    resumed = subprocess.run(_cli(cfg_path, run_dir, "--resume"), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 2, resumed.stderr
    assert "Traceback" not in resumed.stderr and len(resumed.stderr.strip().splitlines()) == 1, resumed.stderr
    return resumed.stderr


def test_resume_reads_the_state_as_plain_data_and_refuses_a_pickled_object(code_data, tmp_path):
    cfg = config(code_data, tmp_path / "run", "train.max_steps=2", "checkpoint.every=1", "log.tensorboard=false")
    Trainer(cfg).train()
    step_dir = step_checkpoints(tmp_path / "run")[-1][1]
    state_file = step_dir / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)  # what was saved is plain data
    assert state["step"] >= 1 and set(state) == {"step", "scheduler", "data", "rng"}
    cfg_path = tmp_path / "run.toml"
    cfg_path.write_text((tmp_path / "run/config.toml").read_text())

    marker = tmp_path / "payload-ran"
    torch.save(state | {"data": _Payload(marker)}, state_file)
    error = _resume_fails(cfg_path, tmp_path / "run")
    assert "refused" in error and "trainer_state.pt" in error
    assert not marker.exists()  # the object was never built
    torch.save(state, state_file)

    index = step_dir / "dcp/.metadata"  # DCP's index is a pickle: only its own classes are built
    sound = index.read_bytes()
    index.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ConfigError, match=f"--resume: {index}: refused: pathlib.Path.touch is not part"):
        Trainer(cfg, resume=True)
    assert not marker.exists()
    index.write_bytes(sound)

    shard = step_dir / "dcp/__0_0.distcp"  # a damaged shard: the checkpoint named
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ConfigError, match=f"--resume: {step_dir / 'dcp'}: cannot be read"):
        Trainer(cfg, resume=True)


def _steps(trainer, n):
    """`n` training steps without the loop around them (no logging, no checkpoints)."""
    for _ in range(n):
        trainer.train_step()
        trainer.step += 1


def test_a_step_checkpoint_written_before_dcp_still_resumes_exactly(code_data, tmp_path):
    """Runs started before step checkpoints were sharded have the weights as safetensors and the
    whole optimizer in trainer_state.pt; --resume continues them to the uninterrupted losses."""
    overrides = ("train.max_steps=6", "log.tensorboard=false")
    Trainer(config(code_data, tmp_path / "whole", *overrides)).train()
    old = Trainer(config(code_data, tmp_path / "old", *overrides))
    _steps(old, 3)
    legacy = step_path(tmp_path / "old", 3)  # that layout, as it was written
    save_pretrained(old.module, legacy)
    optimizer = get_optimizer_state_dict(old.model, old.optimizer, options=StateDictOptions(full_state_dict=True))
    for group in optimizer["param_groups"]:
        group["fused"] = None  # the AdamW of then was not fused
    state = {"step": 3, "scheduler": old.scheduler.state_dict(), "data": old.sampler.state_dict(), "rng": [rng_state()]}
    torch.save(state | {"optimizer": optimizer}, legacy / "trainer_state.pt")

    resumed = Trainer(config(code_data, tmp_path / "old", *overrides), resume=True)
    assert resumed.step == 3
    resumed.train()
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "old")
    assert sorted(got) == [4, 5, 6] and all(abs(expected[s] - got[s]) <= 1e-6 for s in got)


def test_export_writes_a_step_checkpoint_as_a_hugging_face_model(code_data, tmp_path, capsys):
    trainer = Trainer(config(code_data, tmp_path / "run", "train.max_steps=2", "log.tensorboard=false"))
    trainer.train()
    step_dir = trainer.save(step_path(tmp_path / "run", 2))  # the same weights as final/, sharded
    assert (step_dir / "dcp/.metadata").is_file() and not list(step_dir.glob("*.safetensors"))
    assert cwm_main(["train", "--export", str(step_dir), "--out", str(tmp_path / "hf")]) == 0
    final, exported = load_pretrained(tmp_path / "run/final").state_dict(), load_pretrained(tmp_path / "hf").state_dict()
    assert exported.keys() == final.keys() and all(torch.equal(exported[k], final[k]) for k in final)
    assert cwm_main(["train", "--export", str(step_dir), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    half = load_pretrained(tmp_path / "bf16").state_dict()
    assert all(v.dtype == torch.bfloat16 and torch.allclose(v.float(), final[k], atol=1e-2) for k, v in half.items())
    capsys.readouterr()
    for argv, message in [
        (["--export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], "not a training checkpoint"),
        (["--export", str(step_dir)], "--export CHECKPOINT --out DIR"),
        ([], "--config is required"),
    ]:
        assert cwm_main(["train", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_non_finite_step_changes_nothing_and_training_goes_on(code_data, tmp_path):
    trainer = Trainer(config(code_data, tmp_path / "run", "train.max_steps=10", "log.tensorboard=false"))
    trainer.train_step()
    norm = trainer.module.norm.weight
    with torch.no_grad():
        sound, norm[0] = norm[0].item(), float("nan")  # every logit is NaN now
    weights = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    adam = [s["step"].item() for s in trainer.optimizer.state.values()]
    loss, grad_norm, _ = trainer.train_step()
    assert not loss.isfinite() and int(trainer.skipped) == 1 and int(trainer.skipped_in_a_row) == 1
    after = trainer.module.state_dict()
    assert all(torch.equal(after[k].nan_to_num(), v.nan_to_num()) for k, v in weights.items())  # NaN where it was
    assert [s["step"].item() for s in trainer.optimizer.state.values()] == adam  # AdamW did not step
    with torch.no_grad():
        norm[0] = sound
    loss, grad_norm, _ = trainer.train_step()
    assert loss.isfinite() and int(trainer.skipped_in_a_row) == 0 and int(trainer.longest_skip_run) == 1
    assert not torch.equal(trainer.module.state_dict()["lm_head.weight"], weights["lm_head.weight"])


def test_a_diverging_run_stops_after_n_skipped_steps_in_a_row(code_data, tmp_path):
    train, _ = code_data
    cfg_path = tmp_path / "run.toml"  # lr 1e30: step 1 blows the weights up, later gradients are NaN
    cfg_path.write_text(
        f'[model]\noverrides = {TINY}\n[data]\ntrain = ["{train}"]\n'
        "[train]\ndevice = \"cpu\"\nmax_steps = 30\nglobal_batch_size = 8\nmicro_batch_size = 8\nmax_nonfinite_steps = 3\n"
        "[optim]\nlr = 1e30\ngrad_clip = 0.0\n[log]\nconsole = false\ntensorboard = false\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(_cli(cfg_path, tmp_path / "run"), env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "not finite in 3 steps in a row" in run.stderr and "lower optim.lr" in run.stderr
    records = read_jsonl(tmp_path / "run/metrics.jsonl")
    assert [r["skipped"] for r in records] == [0, 1, 1, 1]  # stopped at the third skipped step
    assert not (tmp_path / "run/final").exists()


def test_train_threads_sets_torchs_cpu_threads(code_data, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Trainer(config(code_data, tmp_path / "run", "train.threads=1"))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        Trainer(config(code_data, tmp_path / "run0", "train.threads=0"))  # 0 keeps torch's setting
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="train.threads"):
        config(code_data, tmp_path / "bad", "train.threads=-1")
