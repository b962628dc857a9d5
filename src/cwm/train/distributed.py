"""Process group setup and model wrapping (DDP or FSDP2, activation checkpointing, compile).

A single process needs none of this: `init_distributed` returns world size 1 unless torchrun (or
another launcher) set WORLD_SIZE > 1. Wrapping is applied from outside the model code: FSDP2's
`fully_shard` on each block of `model.layers` and then on the root. The model arrives built on the
meta device and gets its storage and weights only once it is sharded (`materialize`,
`init_weights`), so no rank ever holds the whole of a large model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from cwm.model import Transformer


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from cwm.train.config import ConfigError

        raise ConfigError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def init_distributed(device_name: str = "auto") -> DistInfo:
    device = pick_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return DistInfo(rank, world, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def parallelize(
    model: torch.nn.Module,
    info: DistInfo,
    parallel: str,
    activation_checkpointing: bool,
    compile: bool,
    materialize: Callable[[torch.nn.Module], None] | None = None,
):
    """Apply activation checkpointing, compile and DDP/FSDP2 to a model. A model built on the meta
    device is handed to `materialize` once its parameters are placed: after FSDP2 has sharded them
    (so each rank allocates only its shard), before DDP (which broadcasts rank 0's weights)."""
    materialize = materialize or (lambda model: None)
    blocks = cast(torch.nn.ModuleList, model.layers)
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        # The wrapper's name is stripped from state-dict keys, so checkpoints keep the HF names.
        for i, block in enumerate(blocks):
            blocks[i] = checkpoint_wrapper(block)
    if compile:
        for block in blocks:
            block.compile()  # in place: parameter names do not change
    if not info.enabled or parallel == "ddp":
        materialize(model)
        if not info.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    materialize(model)
    return model


@torch.no_grad()
def init_weights(model: Transformer, seed: int) -> None:
    """`model.init_weights(seed)`, also when its parameters are FSDP2 shards (DTensors).

    init_weights draws each parameter of `model.named_parameters()` in turn from one seeded
    generator. Here each sharded parameter is swapped, for its turn, for a whole parameter of its
    full shape (so `param is self.embed_tokens.weight` still holds); once drawn, this rank keeps
    its slice and the shard is put back. The numbers are those of an unsharded model for every
    world size, and one whole parameter exists at a time.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    sharded = type(model).named_parameters

    def one_at_a_time(*args, **kwargs):
        for name, param in sharded(model, *args, **kwargs):
            if not isinstance(param, DTensor):
                yield name, param
                continue
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            whole = torch.nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device=param.device))
            owner._parameters[leaf] = whole
            try:
                yield name, whole
            finally:
                owner._parameters[leaf] = param
            mine = distribute_tensor(whole.detach(), param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(mine.to_local())

    setattr(model, "named_parameters", one_at_a_time)  # this instance only, for the call below
    try:
        model.init_weights(seed=seed)
    finally:
        del model.named_parameters
