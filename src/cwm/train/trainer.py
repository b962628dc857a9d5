"""The training loop: one `Trainer` for pre-training, mid-training and SFT (the phase is the config).

A step takes one global batch (`train.global_batch_size` sequences over all ranks and micro-batches)
and normalises the summed token loss by the batch's total target count, so the loss and gradients
of a step do not depend on how the batch is split over ranks and micro-batches.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cwm.train import checkpoint as ckpt
from cwm.train.config import ConfigError, TrainConfig, TrainSection, check_data_paths, dump_toml
from cwm.train.data import MixtureSampler, dataset_name, open_datasets, validation_batches
from cwm.train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, init_weights, parallelize
from cwm.train.logging import MetricsLogger, detect_peak_flops, format_duration
from cwm.train.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from cwm.model import ModelConfig

# ---------------------------------------------------------------------------------------------
# Evaluation hooks: trace-prediction metrics and the like plug in here without the trainer
# importing them. A hook is `(model, step) -> {name: value}`; it runs on every rank (the model may
# be sharded, so its forward is collective) and rank 0 logs what it returns.

EvalHook = Callable[[torch.nn.Module, int], dict[str, float]]
EVAL_HOOKS: dict[str, EvalHook] = {}


def register_eval_hook(name: str, fn: EvalHook | None = None):
    """Register `fn` under `name` (usable as a decorator); configs list it in `eval.hooks`."""
    if fn is None:
        return lambda f: register_eval_hook(name, f)
    EVAL_HOOKS[name] = fn
    return fn


def resolve_eval_hook(name: str) -> EvalHook:
    """A registered name, or "package.module:function" (imported, so it can register itself)."""
    if name in EVAL_HOOKS:
        return EVAL_HOOKS[name]
    module, sep, attr = name.partition(":")
    if sep:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"eval.hooks: cannot import {name!r}: {e}") from None
    known = ", ".join(EVAL_HOOKS) or "none registered"
    raise ConfigError(f"eval.hooks: unknown hook {name!r} (registered: {known}); or use 'module:function'")


# ---------------------------------------------------------------------------------------------
# The plan: sizes worked out before anything is built (also what `--dry-run` prints)


@dataclass
class Plan:
    model_config: ModelConfig
    seq_len: int  # packed row length; the model reads seq_len - 1 tokens
    world_size: int
    grad_accum: int
    total_steps: int
    tokens_per_step: int  # global input tokens per optimizer step

    @property
    def total_tokens(self) -> int:
        return self.total_steps * self.tokens_per_step

    @property
    def flops_per_token(self) -> float:
        return self.model_config.flops_per_token(self.seq_len - 1)


def make_plan(cfg: TrainConfig, world_size: int, seq_len: int | None = None) -> Plan:
    from cwm.model import get_preset

    try:
        model_config = get_preset(cfg.model.preset, **cfg.model.overrides)
    except (ValueError, TypeError) as e:  # unknown preset or override field
        raise ConfigError(f"model: {e}") from None
    t = cfg.train
    seq_len = seq_len or cfg.data.seq_len
    if seq_len < 2:
        raise ConfigError("data.seq_len is not set and no dataset gives it; set data.seq_len")
    if seq_len - 1 > model_config.max_seq_len:
        raise ConfigError(f"data.seq_len {seq_len} exceeds the model's max_seq_len {model_config.max_seq_len} (+1)")
    per_step = t.micro_batch_size * world_size
    if t.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
            f"micro_batch_size x world size ({t.micro_batch_size} x {world_size})"
        )
    tokens_per_step = t.global_batch_size * (seq_len - 1)
    total_steps = t.max_steps or math.ceil(t.max_tokens / tokens_per_step)
    return Plan(model_config, seq_len, world_size, t.global_batch_size // per_step, total_steps, tokens_per_step)


def memory_per_device(plan: Plan, cfg: TrainConfig, sharded: bool) -> dict[str, float]:
    """Rough bytes per device: fp32 weights, grads and AdamW moments (16 B/param, sharded under
    FSDP), activations (bf16 block inputs kept when checkpointing, else ~34 B x dim per token and
    layer as in Korthikanti et al. with flash attention), and the logits of one micro-batch
    (bf16 + fp32 copy + fp32 grad)."""
    m, t = plan.model_config, cfg.train
    n = m.num_params()
    shard = plan.world_size if sharded else 1
    tokens = t.micro_batch_size * (plan.seq_len - 1)
    if t.activation_checkpointing:
        activations = tokens * m.dim * 2 * m.n_layers + tokens * m.dim * 34
    else:
        activations = tokens * m.dim * 34 * m.n_layers
    return {
        "weights": 4 * n / shard,
        "gradients": 4 * n / shard,
        "optimizer": 8 * n / shard,
        "activations": activations,
        "logits": tokens * m.vocab_size * 10,
    }


# ---------------------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def build_model(model_config, info: DistInfo, train: TrainSection, materialize=None):
    """The model built on the meta device (no memory), wrapped (activation checkpointing, compile,
    FSDP2 or DDP), then handed to `materialize` to get storage and weights, after sharding under
    FSDP2. Without `materialize` it stays on the meta device (`--dry-run`).
    Returns (the wrapped model, the unwrapped one: under FSDP2 the same object)."""
    from cwm.model import Transformer

    with torch.device("meta"):
        model = Transformer(model_config)
    wrapped = parallelize(model, info, train.parallel, train.activation_checkpointing, train.compile, materialize)
    return wrapped, model


class TrainingError(RuntimeError):
    """The run cannot go on (its loss diverged); the CLI prints it in one line and exits with 1."""


def token_loss_sum(model, batch) -> torch.Tensor:
    """Summed cross-entropy over a micro-batch's counted targets (fp32 logits for the softmax)."""
    logits = model(batch.inputs, doc_ids=batch.doc_ids)
    return F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=-100, reduction="sum")


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, info: DistInfo | None = None):
        self.cfg = cfg
        if cfg.train.threads:  # on a small shared CPU one thread can beat two (docs/training.md)
            torch.set_num_threads(cfg.train.threads)
        self.info = info or init_distributed(cfg.train.device)
        self.plan = make_plan(cfg, self.info.world_size, self._open_data())
        mc = self.plan.model_config
        for path, ds in zip(cfg.data.train + cfg.data.valid, self.train_sets + self.valid_sets):
            if ds.vocab_size > mc.vocab_size:
                raise ConfigError(f"{path}: vocab_size {ds.vocab_size} exceeds the model's {mc.vocab_size}")
        self.hooks = [(name, resolve_eval_hook(name)) for name in cfg.eval.hooks]
        self.run_dir = Path(cfg.train.out_dir)

        # Built on the meta device, sharded, then materialised: under FSDP2 no rank ever holds the
        # whole model (docs/training.md).
        t = cfg.train
        torch.manual_seed(t.seed)
        # A resumed run takes its weights from the checkpoint: init_from is not read again.
        self.resume_from = resume_from = ckpt.latest_checkpoint(self.run_dir) if resume else None
        self.model, self.module = build_model(mc, self.info, t, materialize=self._materialize)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, self.plan.total_steps, cfg.schedule)
        self.sampler = MixtureSampler(self.train_sets, cfg.data.weights, cfg.data.seed)
        self.autocast = _autocast(self.info.device, t.precision)
        self.peak_flops = detect_peak_flops(self.info.device, cfg.log.peak_flops)

        self.step = 0
        # Non-finite steps, counted on the device (read at log time): skipped since the last
        # record, skipped in a row now, the longest such run.
        self.skipped, self.skipped_in_a_row, self.longest_skip_run = (
            torch.zeros((), dtype=torch.long, device=self.info.device) for _ in range(3)
        )
        if resume_from is not None:
            try:
                self.step = ckpt.load_checkpoint(
                    resume_from, self.model, self.optimizer, self.scheduler, self.sampler, self.info
                )
            except ckpt.CheckpointStateError as e:  # unsafe or damaged state file: its own message
                raise ConfigError(f"--resume: {e}") from None
            except (ValueError, RuntimeError, KeyError) as e:
                first = str(e).strip().splitlines()[0]
                raise ConfigError(f"--resume: {resume_from} does not fit this config: {first}") from None
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(dump_toml(cfg))
        barrier()
        self.logger = MetricsLogger(
            self.run_dir, self.info.is_main, cfg.log.console, cfg.log.tensorboard, self.step if resume_from else None
        )
        self.logger.print(self._describe())
        if resume_from is not None:
            self.logger.print(f"resumed from {resume_from} at step {self.step}")
        elif resume:
            self.logger.print(f"no checkpoint in {self.run_dir}; starting from step 0")

    def _open_data(self) -> int:
        """Open the packed datasets; returns their common row length."""
        cfg = self.cfg
        check_data_paths(cfg)
        try:
            self.train_sets = open_datasets(cfg.data.train)
            self.valid_sets = open_datasets(cfg.data.valid)
        except (OSError, ValueError) as e:  # a truncated or foreign directory
            raise ConfigError(f"data: {e}") from None
        lengths = {ds.seq_len for ds in self.train_sets + self.valid_sets}
        if len(lengths) > 1 or (cfg.data.seq_len and lengths != {cfg.data.seq_len}):
            raise ConfigError(
                f"data: the packed datasets have rows of {sorted(lengths)} tokens, data.seq_len is "
                f"{cfg.data.seq_len}; all must be equal (data.seq_len = 0 takes the datasets')"
            )
        return lengths.pop()

    def _materialize(self, model) -> None:
        """Give the meta-device model real storage on this rank's device (only its shard under
        FSDP2) and its starting weights: drawn from the seed, then `model.init_from` if set (and
        the run is not resuming)."""
        model.to_empty(device=self.info.device)
        init_weights(model, self.cfg.train.seed)  # also sets the buffers (rope) that to_empty left empty
        if self.cfg.model.init_from and self.resume_from is None:
            self._load_init(model, self.cfg.model.init_from)

    def _load_init(self, model, path: str) -> None:
        """Weights from a Hugging Face checkpoint (read by rank 0 and broadcast: each rank keeps its
        shard) or from a step checkpoint (each rank reads its shard)."""
        from cwm.model.checkpoint import CheckpointError, hf_shapes, read_config

        try:
            theirs = read_config(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"model.init_from: cannot load {path}: {e}") from None
        mine = self.plan.model_config
        there, here = hf_shapes(theirs), hf_shapes(mine)
        differ = sorted(k for k in there.keys() | here.keys() if there.get(k) != here.get(k))
        if differ:
            raise ConfigError(
                f"model.init_from: {path} does not fit model preset {self.cfg.model.preset!r} "
                f"with overrides {self.cfg.model.overrides}: {differ[0]} is {there.get(differ[0])} there, "
                f"{here.get(differ[0])} here"
            )
        for what in ("attention_types", "rope_parameters"):  # same shapes, different function
            if getattr(mine, what)() != getattr(theirs, what)():
                raise ConfigError(
                    f"model.init_from: {path} has {what} {getattr(theirs, what)()}, the config's model "
                    f"{getattr(mine, what)()}; set model.preset/overrides to match the checkpoint"
                )
        if ckpt.is_step_checkpoint(path):
            try:
                ckpt.load_model_weights(path, model, self.info)
            except ckpt.CheckpointStateError as e:
                raise ConfigError(f"model.init_from: {e}") from None
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from cwm.model import load_pretrained

        weights = {}
        if self.info.is_main:
            try:
                weights = load_pretrained(path, device="cpu").state_dict()
            except (OSError, CheckpointError) as e:
                raise ConfigError(f"model.init_from: cannot load {path}: {e}") from None
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.info.enabled)
        set_model_state_dict(model, weights, options=options)

    def _describe(self) -> str:
        info, plan = self.info, self.plan
        mode = "single process"
        if info.enabled:
            mode = "FSDP2" if self.cfg.train.parallel == "fsdp" else "DDP"
        # Under FSDP2 parameters are DTensors; their local shard is what this rank holds.
        local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in self.model.parameters())
        total = sum(p.numel() for p in self.model.parameters())
        return (
            f"{mode}, {info.world_size} rank(s) on {info.device}: {local / total:.0%} of {total:,} parameters "
            f"per rank; {plan.grad_accum} micro-batch(es) of {self.cfg.train.micro_batch_size} per rank per step; "
            f"{plan.total_steps:,} steps of {plan.tokens_per_step:,} tokens"
        )

    # -----------------------------------------------------------------------------------------

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (mean loss, grad norm, target count) of the global batch as
        tensors on the device, so nothing waits for the device here (they are read at log time).

        A step whose loss or gradient norm is not finite changes nothing: the fused AdamW skips
        its update on the device (`found_inf`, as a GradScaler would) and `self.skipped` counts it."""
        info, cfg = self.info, self.cfg
        batches = [
            b.to(info.device)
            for b in self.sampler.next_batches(cfg.train.global_batch_size, cfg.train.micro_batch_size, info.rank, info.world_size)
        ]
        counts = torch.stack([(b.targets != -100).sum() for b in batches])
        n_targets = all_reduce_sum(counts.sum().reshape(1))[0]  # on the device
        # DDP and FSDP average gradients over ranks; the world factor turns that back into a sum.
        scale = info.world_size / n_targets.clamp(min=1)
        loss_sum = torch.zeros((), device=info.device)
        for i, batch in enumerate(batches):
            with self._grad_sync(last=i == len(batches) - 1):
                with self.autocast():
                    loss = token_loss_sum(self.model, batch)
                (loss * scale).backward()
            loss_sum += loss.detach()
        loss = all_reduce_sum(loss_sum.reshape(1))[0] / n_targets.clamp(min=1)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))  # the same on every rank
        setattr(self.optimizer, "found_inf", bad.float())  # read by the fused step
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped += bad
        self.skipped_in_a_row = (self.skipped_in_a_row + 1) * bad
        self.longest_skip_run = torch.maximum(self.longest_skip_run, self.skipped_in_a_row)
        return loss, grad_norm, n_targets

    def _grad_sync(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if self.info.enabled and not last:
            if hasattr(self.model, "no_sync"):  # DDP
                return self.model.no_sync()
            self.model.set_requires_gradient_sync(False)  # FSDP2
        elif self.info.enabled and hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(True)
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        self.model.eval()
        metrics, total = {}, torch.zeros(2, device=info.device)
        for path, ds in zip(cfg.data.valid, self.valid_sets):
            sums = torch.zeros(2, device=info.device)  # loss sum, target count
            for batch in validation_batches(
                ds, cfg.train.micro_batch_size, cfg.eval.max_batches, info.rank, info.world_size
            ):
                batch = batch.to(info.device)
                with self.autocast():
                    sums[0] += token_loss_sum(self.model, batch)
                sums[1] += (batch.targets != -100).sum()  # on the device: no wait per batch
            all_reduce_sum(sums)
            metrics[f"val_loss/{dataset_name(path)}"] = (sums[0] / sums[1].clamp(min=1)).item()
            total += sums
        if self.valid_sets:
            metrics["val_loss"] = (total[0] / total[1].clamp(min=1)).item()
        for name, hook in self.hooks:
            metrics.update({f"{name}/{k}": float(v) for k, v in hook(self.model, self.step).items()})
        self.model.train()
        return metrics

    def save(self, path: Path) -> Path:
        self._check_finite()
        path = ckpt.save_checkpoint(
            path, self.model, self.plan.model_config, self.optimizer, self.scheduler, self.sampler, self.step, self.info,
            tokenizer_dir=self._tokenizer_dir(),
        )
        if self.info.is_main:
            ckpt.prune_checkpoints(self.run_dir, self.cfg.checkpoint.keep_last)
        return path

    def export(self, path: Path) -> Path:
        """The Hugging Face export of the current weights (what `final/` holds)."""
        return ckpt.export_final(
            path, self.model, self.plan.model_config, self.scheduler, self.sampler, self.step, self.info,
            tokenizer_dir=self._tokenizer_dir(),
        )

    def _tokenizer_dir(self):
        return next((ds.path for ds in self.train_sets if ds.has_tokenizer), None)

    def _check_finite(self) -> None:
        """Stop once `train.max_nonfinite_steps` steps in a row were skipped (read here, at log and
        checkpoint time, not every step)."""
        limit = self.cfg.train.max_nonfinite_steps
        if limit and int(self.longest_skip_run) >= limit:
            raise TrainingError(
                f"step {self.step}: the loss or gradient norm was not finite in {int(self.longest_skip_run)} steps "
                f"in a row (skipped: the weights did not change); stopping. Resume from the last checkpoint "
                f"with a lower optim.lr, or raise train.max_nonfinite_steps"
            )

    def train(self) -> dict:
        """Run to `plan.total_steps`; returns the last logged record."""
        cfg, plan, info = self.cfg, self.plan, self.info
        total, every = plan.total_steps, cfg.log.every
        self.model.train()
        last: dict = {}
        start_time = last_time = time.perf_counter()
        start_step = last_step = self.step
        while self.step < total:
            loss, grad_norm, n_targets = self.train_step()
            self.step += 1
            if self.step % every == 0 or self.step == total:
                now = time.perf_counter()
                tokens_per_s = (self.step - last_step) * plan.tokens_per_step / (now - last_time)
                eta = (now - start_time) / (self.step - start_step) * (total - self.step)
                last = {
                    "step": self.step,
                    "loss": loss.item(),
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm.item(),
                    "targets": int(n_targets),
                    "skipped": int(self.skipped),
                    "tokens": self.step * plan.tokens_per_step,
                    "tokens_per_s": tokens_per_s,
                }
                self.skipped.zero_()
                mfu = ""
                if self.peak_flops:
                    last["mfu"] = plan.flops_per_token * tokens_per_s / (self.peak_flops * info.world_size)
                    mfu = f" mfu {last['mfu']:.1%}"
                skipped = f" skipped {last['skipped']}" if last["skipped"] else ""
                self.logger.log(
                    last,
                    f"step {self.step}/{total} loss {last['loss']:.4f} lr {last['lr']:.2e} "
                    f"tok/s {tokens_per_s:,.0f}{mfu}{skipped} eta {format_duration(eta)}",
                )
                last_time, last_step = now, self.step
                self._check_finite()
            evaluating = self.valid_sets or self.hooks
            if evaluating and cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < total:
                self._log_eval()
            if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < total:
                self.save(ckpt.step_path(self.run_dir, self.step))
        self._check_finite()
        if self.valid_sets or self.hooks:
            last.update(self._log_eval())
        final = self.export(self.run_dir / "final")
        self.logger.print(f"done: {self.step} steps; final checkpoint {final}")
        self.logger.close()
        return last

    def _log_eval(self) -> dict:
        metrics = self.evaluate()
        text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.logger.log({"step": self.step, **metrics}, f"eval step {self.step}: {text}")
        return metrics
