"""Training checkpoints: the model in its Hugging Face layout plus the state to resume exactly.

    RUN/checkpoints/step_00000100/
        config.json, model*.safetensors     cwm.model.save_pretrained (loads in transformers too)
        trainer_state.pt                    optimizer, scheduler, data position, RNG states, step
                                            (plain data only: tensors, numbers, strings, lists,
                                            dicts; read back with torch.load(weights_only=True))
    RUN/final/                              the same, written when the run ends

A checkpoint is built under `NAME.tmp`, every file fsynced, then renamed into place, so a run killed
at any moment leaves only complete checkpoints (and perhaps a `.tmp` that the next save removes).
States come from torch.distributed.checkpoint's full-state-dict API, which gives the same plain
names (no DDP `module.`, no wrapper prefixes) for one process, DDP and FSDP2 alike.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from cwm.train.distributed import DistInfo, barrier

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class CheckpointStateError(ValueError):
    """A trainer_state.pt that cannot be read safely (not plain data) or is damaged."""


def rng_state() -> dict:
    """Every generator's state as plain data (numpy's key array as a tensor), so that the state
    file loads with weights_only=True."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"] = {"key": torch.from_numpy(numpy["state"]["key"].astype(np.int64)), "pos": int(numpy["state"]["pos"])}
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = dict(state["numpy"])
    numpy["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32), "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path, model, model_config, optimizer, scheduler, sampler, step: int, info: DistInfo, tokenizer_dir=None
) -> Path:
    """Collective: every rank calls it; rank 0 writes `path` atomically. With `tokenizer_dir`, its
    tokenizer files go in too, so the checkpoint loads for generation on its own."""
    from cwm.model import Transformer, save_pretrained

    weights = get_model_state_dict(model, options=_FULL)
    optim_state = get_optimizer_state_dict(model, optimizer, options=_FULL)
    rng = [None] * info.world_size
    if info.enabled:
        dist.all_gather_object(rng, rng_state())
    else:
        rng = [rng_state()]
    if info.is_main:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with torch.device("meta"):
            plain = Transformer(model_config)
        plain.load_state_dict(weights, assign=True)
        save_pretrained(plain, tmp)
        if tokenizer_dir is not None:
            from cwm.tokenizer import copy_tokenizer_files

            copy_tokenizer_files(tokenizer_dir, tmp)
        torch.save(
            {
                "step": step,
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "data": sampler.state_dict(),
                "rng": rng,
            },
            tmp / STATE_FILE,
        )
        _fsync_tree(tmp)
        old = path.with_name(path.name + ".old")  # only `final` is ever rewritten
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler, sampler, info: DistInfo) -> int:
    """Restore everything `save_checkpoint` wrote into the (wrapped) model and trainer objects."""
    from cwm.model import CheckpointError, load_pretrained

    path = Path(path)
    try:
        weights = load_pretrained(path, device="cpu").state_dict()
    except CheckpointError as e:  # damaged files: say which, not "does not fit this config"
        raise CheckpointStateError(str(e)) from None
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    state = read_state(path / STATE_FILE)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["data"])
    rng = state["rng"]
    set_rng_state(rng[info.rank] if len(rng) == info.world_size else rng[0])
    return int(state["step"])


def read_state(file: Path) -> dict:
    """trainer_state.pt, unpickling only plain data (weights_only=True): a file that carries any
    other object (code that would run on load) is refused, never executed."""
    import pickle

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise CheckpointStateError(
            f"{file}: refused: it holds objects other than plain data ({detail}); "
            "only load checkpoints you made, or start the run again without --resume"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointStateError(f"{file}: damaged or not a trainer state ({e}); resume from another checkpoint") from None
    if not isinstance(state, dict) or not {"step", "optimizer", "scheduler", "data", "rng"} <= state.keys():
        raise CheckpointStateError(f"{file}: not a trainer state (expected step, optimizer, scheduler, data and rng)")
    return state


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = step_checkpoints(run_dir)
    return found[-1][1] if found else None


def step_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}"


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    for _, p in step_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
    for tmp in (Path(run_dir) / "checkpoints").glob("*.tmp"):  # left by a run killed mid-save
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
