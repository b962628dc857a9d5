"""Training metrics: a rich console line, a JSONL file and TensorBoard, all from one `log` call."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s per GPU (vendor datasheets, no sparsity), matched by device-name substring.
KNOWN_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


def detect_peak_flops(device: torch.device, configured: float) -> float | None:
    """The configured peak if set, else a known GPU's; None (no MFU) on CPU or unknown devices."""
    if configured > 0:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in KNOWN_PEAK_FLOPS.items():
            if key in name:
                return flops
    return None


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class MetricsLogger:
    """Writes records to RUN/metrics.jsonl, TensorBoard (RUN/tb) and the console; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, console: bool, tensorboard: bool, resume_step: int | None = None):
        self.enabled = enabled
        self.console = None
        self.tb = None
        self.file = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            _truncate_jsonl(path, resume_step)
        elif path.exists():
            path.unlink()
        self.file = open(path, "a", buffering=1)
        if console:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False, soft_wrap=True)  # one record, one line
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a killed run wrote after the checkpoint we resume from.
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=None if resume_step is None else resume_step + 1)

    def log(self, record: dict, line: str | None = None) -> None:
        if self.file is None:  # not rank 0
            return
        self.file.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])
        if self.console is not None and line:
            self.console.print(line)

    def print(self, text: str) -> None:
        if self.enabled and self.console is not None:
            self.console.print(text)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep only records up to the resumed step (a killed run may have logged past its checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            pass  # a line cut short by the kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
