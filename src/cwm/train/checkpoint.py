"""Training checkpoints: sharded per rank while training, exported to the Hugging Face layout at the end.

    RUN/checkpoints/step_00000100/          a step checkpoint, to resume from
        dcp/                                model + optimizer, torch.distributed.checkpoint: every rank
                                            writes its own shard (__R_0.distcp) and rank 0 the index
                                            (.metadata); loads at any world size (DCP reshards)
        trainer_state.pt                    step, scheduler, data position, every rank's RNG state
                                            (plain data only: read with torch.load(weights_only=True))
        config.json, tokenizer files        the model's config and the data's tokenizer, so the
                                            checkpoint exports on its own (`cwm train --export`)
    RUN/final/                              the Hugging Face export written when the run ends:
        config.json, model*.safetensors     cwm.model.save_pretrained (loads in transformers too)
        tokenizer files, trainer_state.pt   the same state as above (it says which step this is)

No rank ever holds the whole model or optimizer for a step checkpoint: DCP writes each rank's
FSDP2 shards as they are (~390 GB at 32B were gathered on rank 0 before). Only the export gathers
the weights (not the optimizer) to rank 0's CPU, one tensor at a time.

A checkpoint is built under `NAME.tmp`, every file fsynced, then renamed into place, so a run killed
at any moment leaves only complete checkpoints (and perhaps a `.tmp` that the next save removes).
Reading one runs no code from it: the trainer state is unpickled with weights_only=True, DCP's index
with an unpickler that builds only DCP's metadata classes, and DCP's non-tensor items (optimizer
hyper-parameters) with weights_only=True as well.

Step checkpoints written before DCP (`trainer_state.pt` with the optimizer inside, weights as
safetensors next to it) still resume: `load_checkpoint` reads either layout.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException, FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from cwm.train.distributed import DistInfo, barrier

STATE_FILE = "trainer_state.pt"
DCP_DIR = "dcp"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_STATE_KEYS = {"step", "scheduler", "data", "rng"}
_IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


class CheckpointStateError(ValueError):
    """A checkpoint that cannot be read safely (not plain data) or is damaged."""


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


def _gather_rng(info: DistInfo) -> list | None:
    """Every rank's RNG state, on rank 0 (None elsewhere)."""
    if not info.enabled:
        return [rng_state()]
    out = [None] * info.world_size if info.is_main else None
    dist.gather_object(rng_state(), out, dst=0)
    return out


# ---------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    path: Path, model, model_config, optimizer, scheduler, sampler, step: int, info: DistInfo, tokenizer_dir=None
) -> Path:
    """A step checkpoint. Collective: every rank calls it and writes its own shard of the model
    and optimizer; rank 0 writes the rest and renames the directory into place."""
    model_state, optim_state = get_state_dict(model, optimizer)
    rng = _gather_rng(info)

    def write(tmp: Path) -> None:
        barrier()  # rank 0 has made `tmp`
        with _quiet_single_process():
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp / DCP_DIR, no_dist=not info.enabled)
        if info.is_main:
            (tmp / "config.json").write_text(json.dumps(model_config.to_hf_dict(), indent=2) + "\n")
            _write_state(tmp, step, scheduler, sampler, rng, tokenizer_dir)

    return _atomic_dir(path, info, write)


def export_final(path: Path, model, model_config, scheduler, sampler, step: int, info: DistInfo, tokenizer_dir=None) -> Path:
    """The Hugging Face export of a (wrapped, perhaps sharded) model, plus the trainer state without
    the optimizer. Collective; the weights are gathered to rank 0's CPU one tensor at a time."""
    weights = get_model_state_dict(model, options=_FULL)
    rng = _gather_rng(info)

    def write(tmp: Path) -> None:
        if info.is_main:
            _save_hf(model_config, weights, tmp)
            _write_state(tmp, step, scheduler, sampler, rng, tokenizer_dir)

    return _atomic_dir(path, info, write)


def export_checkpoint(step_dir: Path, out_dir: Path, dtype: torch.dtype | None = None) -> Path:
    """`cwm train --export`: a step checkpoint's model as a Hugging Face directory (one process;
    the whole model is read into CPU memory once). A checkpoint already in that layout (`final/`,
    or a step checkpoint written before DCP) is written out again (in `dtype` if given)."""
    from cwm.model.checkpoint import CheckpointError, read_config

    step_dir, out_dir = Path(step_dir), Path(out_dir)
    if not (step_dir / DCP_DIR).is_dir():
        if not (step_dir / "config.json").is_file():
            raise CheckpointStateError(f"{step_dir}: not a training checkpoint (no {DCP_DIR}/ and no config.json)")
        from cwm.model import load_pretrained

        try:
            model = load_pretrained(step_dir, dtype=dtype)
        except CheckpointError as e:
            raise CheckpointStateError(str(e)) from None
        return _save_hf(model.cfg, model.state_dict(), out_dir, dtype, tokenizer_dir=step_dir)
    try:
        cfg = read_config(step_dir)
    except CheckpointError as e:
        raise CheckpointStateError(str(e)) from None
    from cwm.model import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    weights = {k: torch.empty_like(v, device="cpu") for k, v in model.state_dict().items()}
    _load_dcp(step_dir, {"model": weights}, distributed=False)
    return _save_hf(cfg, weights, out_dir, dtype, tokenizer_dir=step_dir)


def _save_hf(cfg, weights: dict, out_dir: Path, dtype=None, tokenizer_dir=None) -> Path:
    from cwm.model import save_pretrained
    from cwm.model.checkpoint import model_from_state_dict

    save_pretrained(model_from_state_dict(cfg, weights, "cpu"), out_dir, dtype=dtype)
    if tokenizer_dir is not None:
        from cwm.tokenizer import copy_tokenizer_files

        copy_tokenizer_files(tokenizer_dir, out_dir)
    return Path(out_dir)


def _write_state(directory: Path, step: int, scheduler, sampler, rng: list | None, tokenizer_dir) -> None:
    state = {"step": step, "scheduler": scheduler.state_dict(), "data": sampler.state_dict(), "rng": rng}
    torch.save(state, directory / STATE_FILE)
    if tokenizer_dir is not None:
        from cwm.tokenizer import copy_tokenizer_files

        copy_tokenizer_files(tokenizer_dir, directory)


def _atomic_dir(path: Path, info: DistInfo, write) -> Path:
    """Fill `path` through `write(tmp)` on every rank, then (rank 0) fsync and rename into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    write(tmp)
    barrier()  # every rank's shard is written (DCP fsyncs its files)
    if info.is_main:
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


# ---------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: Path, model, optimizer, scheduler, sampler, info: DistInfo) -> int:
    """Restore a step checkpoint (either layout) into the (wrapped) model and trainer objects."""
    path = Path(path)
    state = read_state(path / STATE_FILE)
    # How the optimizer runs is this code's choice, not the checkpoint's (old ones say fused=None).
    how = [{k: group[k] for k in _IMPLEMENTATION if k in group} for group in optimizer.param_groups]
    if (path / DCP_DIR).is_dir():
        model_state, optim_state = get_state_dict(model, optimizer)  # this run's shards, to fill
        _load_dcp(path, {"model": model_state, "optim": optim_state}, distributed=info.enabled)
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    else:
        _load_full(path, model, optimizer, state)
    for group, keep in zip(optimizer.param_groups, how):
        group.update(keep)
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["data"])
    rng = state["rng"]
    set_rng_state(rng[info.rank] if len(rng) == info.world_size else rng[0])
    return int(state["step"])


def _load_full(path: Path, model, optimizer, state: dict) -> None:
    """A step checkpoint written before DCP: whole weights as safetensors, the whole optimizer in
    trainer_state.pt (read on every rank; each keeps its shard)."""
    from cwm.model import CheckpointError, load_pretrained

    if "optimizer" not in state:
        raise CheckpointStateError(f"{path}: no {DCP_DIR}/ and no optimizer state: not a step checkpoint to resume from")
    try:
        weights = load_pretrained(path, device="cpu").state_dict()
    except CheckpointError as e:  # damaged files: say which, not "does not fit this config"
        raise CheckpointStateError(str(e)) from None
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=full)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=full)


def load_model_weights(path: str | Path, model, info: DistInfo) -> None:
    """Only the weights of a step checkpoint (`model.init_from` pointing at one), into this run's
    shards: no rank reads more than DCP gives it."""
    model_state = get_model_state_dict(model)
    _load_dcp(Path(path), {"model": model_state}, distributed=info.enabled)
    set_model_state_dict(model, model_state)


def is_step_checkpoint(path: str | Path) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def _load_dcp(path: Path, state: dict, distributed: bool) -> None:
    root = path / DCP_DIR
    if not (root / ".metadata").is_file():
        raise CheckpointStateError(f"{root}: no .metadata: the checkpoint is incomplete; resume from another one")
    reader = _PlainReader(root)
    reader.read_metadata()  # refused or damaged: our one line here, before DCP wraps it per rank
    try:
        with _quiet_single_process():
            dcp.load(state, storage_reader=reader, planner=_PlainPlanner(), no_dist=not distributed)
    except CheckpointException as e:
        first = next(iter(e.failures.values()))[0]
        if isinstance(first, CheckpointStateError):
            raise first from None
        raise CheckpointStateError(f"{root}: cannot be read ({_first_line(first)}); resume from another checkpoint") from None
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointStateError(f"{root}: cannot be read ({_first_line(e)}); resume from another checkpoint") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def _quiet_single_process():
    """DCP warns on every single-process save and load that it assumes one process; so do we."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# DCP's index is a pickle; these are the only classes it holds (checked against torch 2.13).
_DCP_METADATA = "torch.distributed.checkpoint.metadata"
_ALLOWED = {
    (_DCP_METADATA, name)
    for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class _PlainReader(FileSystemReader):
    """DCP's reader, but its index is unpickled only into DCP's own metadata classes."""

    def read_metadata(self, *args, **kwargs):
        file = Path(self.path) / ".metadata"
        try:
            with open(file, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except pickle.UnpicklingError as e:
            raise CheckpointStateError(
                f"{file}: refused: {e}; only load checkpoints you made, or start the run again without --resume"
            ) from None
        except (EOFError, OSError, ValueError, AttributeError, TypeError) as e:
            raise CheckpointStateError(f"{file}: damaged ({e}); resume from another checkpoint") from None
        if getattr(metadata, "storage_data", None) is None or not hasattr(metadata, "state_dict_metadata"):
            raise CheckpointStateError(f"{file}: not a checkpoint index; resume from another checkpoint")
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _refusal(e: pickle.UnpicklingError) -> str:
    """The first line of why torch's weights-only unpickler refused a file."""
    return str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]


class _PlainPlanner(DefaultLoadPlanner):
    """DCP's planner, but non-tensor items are checked to be plain data before DCP unpickles them."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            detail = _refusal(e)
            raise CheckpointStateError(
                f"{read_item.dest_index.fqn}: refused: it holds objects other than plain data ({detail}); "
                "only load checkpoints you made"
            ) from None
        value.seek(0)
        super().load_bytes(read_item, value)


def read_state(file: Path) -> dict:
    """trainer_state.pt, unpickling only plain data (weights_only=True): a file that carries any
    other object (code that would run on load) is refused, never executed."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _refusal(e)
        raise CheckpointStateError(
            f"{file}: refused: it holds objects other than plain data ({detail}); "
            "only load checkpoints you made, or start the run again without --resume"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointStateError(f"{file}: damaged or not a trainer state ({e}); resume from another checkpoint") from None
    if not isinstance(state, dict) or not _STATE_KEYS <= state.keys():
        raise CheckpointStateError(f"{file}: not a trainer state (expected step, scheduler, data and rng)")
    return state


# ---------------------------------------------------------------------------------------------
# A run's checkpoints


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
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
