"""Training configs: TOML files read into nested dataclasses, with `section.key=value` overrides.

Every key is checked against the dataclasses below (unknown keys and wrong types are errors), so a
typo stops the run at start instead of silently training with a default. The resolved config is
written back as TOML into the run directory (`dump_toml`), so `cwm train --config RUN/config.toml`
repeats a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A user-fixable problem with a training config; the CLI prints it and exits with code 2."""


@dataclass
class ModelSection:
    preset: str = "cwm-tiny"  # a cwm.model preset name
    overrides: dict = field(default_factory=dict)  # ModelConfig fields to change, e.g. {n_layers = 2}
    init_from: str = ""  # an HF-layout checkpoint dir (e.g. "runs/pretrain/final") to start from


@dataclass
class DataSection:
    train: list[str] = field(default_factory=list)  # packed dataset dirs (cwm.data.packed)
    weights: list[float] = field(default_factory=list)  # mixture weights, one per train dir; empty = equal
    valid: list[str] = field(default_factory=list)  # packed dataset dirs for validation loss
    seq_len: int = 0  # tokens per packed row (the model sees seq_len - 1 inputs); 0 = from the data
    seed: int = 0  # the mixture's sampling seed


@dataclass
class OptimSection:
    lr: float = 3e-4  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # applied to matrices only (see optim.py)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping


@dataclass
class ScheduleSection:
    kind: str = "cosine"  # "cosine", "wsd" (warmup-stable-decay) or "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd only: the last fraction of steps that decays linearly


@dataclass
class TrainSection:
    out_dir: str = "runs/default"  # run directory: checkpoints, metrics, resolved config
    seed: int = 0  # model init seed
    max_steps: int = 0  # optimizer steps; 0 = derive from max_tokens
    max_tokens: float = 0.0  # training tokens (targets seen) when max_steps is 0
    global_batch_size: int = 8  # sequences per optimizer step, over all ranks and micro-batches
    micro_batch_size: int = 8  # sequences per forward/backward on one rank
    device: str = "auto"  # "auto" (cuda if available), "cpu" or "cuda"
    precision: str = "auto"  # "auto" (bf16 autocast where the device supports it), "bf16" or "fp32"
    parallel: str = "fsdp"  # under torchrun: "fsdp" (FSDP2, sharded) or "ddp"
    activation_checkpointing: bool = False  # recompute each block in backward
    compile: bool = False  # torch.compile each block
    threads: int = 0  # CPU threads for torch (torch.set_num_threads); 0 = torch's default (all cores)
    plan_world_size: int = 1  # GPUs assumed by the --dry-run plan (the real run uses torchrun's)
    max_nonfinite_steps: int = 10  # stop after this many skipped (non-finite loss/grad) steps in a row; 0 = never


@dataclass
class CheckpointSection:
    every: int = 0  # steps between checkpoints; 0 = only the final one
    keep_last: int = 3  # step checkpoints kept (the final one is always kept)


@dataclass
class EvalSection:
    every: int = 0  # steps between evaluations; 0 = only at the end (if valid data or hooks exist)
    max_batches: int = 8  # validation micro-batches per dataset
    hooks: list[str] = field(default_factory=list)  # registered names or "module:function" (see trainer.py)


@dataclass
class LogSection:
    every: int = 1  # steps between console/JSONL/TensorBoard records
    tensorboard: bool = True
    console: bool = True
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0 = detect known GPUs, omit MFU otherwise


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)


# ---------------------------------------------------------------------------------------------
# Loading


MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Read a TOML config (or start from the defaults), apply overrides, check and return it."""
    raw: dict = {}
    where = "the defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; pass an existing TOML file to --config")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes is far too large for a training config")
        try:
            raw = tomllib.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); a training config is a TOML file") from None
        except (tomllib.TOMLDecodeError, RecursionError) as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for item in overrides:
        _apply_override(raw, item)
    cfg = _build(TrainConfig, raw, "", where)
    check_config(cfg)
    return cfg


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not `section.key=value` (e.g. optim.lr=1e-3)")
    try:  # TOML value syntax; a bare word that is not TOML (a path, a name) is taken as a string
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[leaf] = value


def _build(cls, raw: dict, prefix: str, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{hint}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], f"{prefix}{name}.", where)
        else:
            values[name] = _check_type(raw[name], hint, f"{prefix}{name}", where)
    return cls(**values)


def _check_type(value, hint, key: str, where: str):
    origin = typing.get_origin(hint) or hint
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
        list: lambda v: isinstance(v, list),
    }[origin]
    if not ok(value):
        raise ConfigError(f"{where}: {key} = {value!r} should be {_type_name(hint)}")
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    return float(value) if origin is float else value


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}[hint]


def check_config(cfg: TrainConfig) -> None:
    """Checks that need no files or model: value ranges and choices."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    t, s, o, d = cfg.train, cfg.schedule, cfg.optim, cfg.data
    need(s.kind in ("cosine", "wsd", "constant"), f"schedule.kind = {s.kind!r}; use cosine, wsd or constant")
    need(t.precision in ("auto", "bf16", "fp32"), f"train.precision = {t.precision!r}; use auto, bf16 or fp32")
    need(t.parallel in ("fsdp", "ddp"), f"train.parallel = {t.parallel!r}; use fsdp or ddp")
    need(t.device in ("auto", "cpu", "cuda"), f"train.device = {t.device!r}; use auto, cpu or cuda")
    need(t.max_steps > 0 or t.max_tokens > 0, "set train.max_steps or train.max_tokens (both are 0)")
    need(t.micro_batch_size > 0 and t.global_batch_size > 0, "train.micro_batch_size and global_batch_size must be > 0")
    need(0 <= t.threads <= 4096, f"train.threads = {t.threads} must be 0 (torch's default) or a thread count")
    need(
        t.global_batch_size % t.micro_batch_size == 0,
        f"train.global_batch_size ({t.global_batch_size}) must be a multiple of micro_batch_size ({t.micro_batch_size})",
    )
    need(o.lr > 0 and math.isfinite(o.lr), f"optim.lr = {o.lr} must be a positive number")
    need(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas = {o.betas} must be two numbers in [0, 1)"
    )
    need(0 <= s.min_lr_ratio <= 1, f"schedule.min_lr_ratio = {s.min_lr_ratio} must be in [0, 1]")
    need(0 < s.decay_fraction <= 1, f"schedule.decay_fraction = {s.decay_fraction} must be in (0, 1]")
    need(s.warmup_steps >= 0, "schedule.warmup_steps must be >= 0")
    need(t.max_nonfinite_steps >= 0, "train.max_nonfinite_steps must be >= 0 (0 = never stop)")
    need(cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last must be >= 1")
    need(cfg.log.every >= 1, "log.every must be >= 1")
    if d.weights:
        need(
            len(d.weights) == len(d.train),
            f"data.weights has {len(d.weights)} entries for {len(d.train)} data.train dirs",
        )
        need(all(w >= 0 for w in d.weights) and sum(d.weights) > 0, "data.weights must be >= 0 with a positive sum")


def check_data_paths(cfg: TrainConfig) -> None:
    """Every data dir must exist and be a packed dataset (checked before any work starts)."""
    if not cfg.data.train:
        raise ConfigError("data.train is empty; list packed dataset dirs (made by `cwm data pack`)")
    for key in ("train", "valid"):
        for p in getattr(cfg.data, key):
            if not (Path(p) / "meta.json").is_file():
                raise ConfigError(
                    f"data.{key}: {p} is not a packed dataset (no meta.json); build it with `cwm data pack`"
                )


# ---------------------------------------------------------------------------------------------
# Writing (tomllib reads only; our configs hold only scalars, lists and one flat table)


def dump_toml(cfg: TrainConfig) -> str:
    lines = []
    for section in dataclasses.fields(cfg):
        lines.append(f"[{section.name}]")
        for key, value in dataclasses.asdict(getattr(cfg, section.name)).items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")
