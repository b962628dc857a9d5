"""Trajectories: one episode as a chat, and as training data.

A trajectory file is JSONL, one episode per line (`cwm agent run` writes one line, `cwm agent
collect` many):

    {"format": "cwm-trajectory-1", "instance_id": ..., "messages": [...], "info": {...}}

`messages` are the chat exactly as the model saw and wrote it, with the release's roles:
`system`, `user` (the issue prompt; format errors), `assistant` (its whole text, `<think>\\n`
first, as the open turn of the prompt starts), `tool: NAME` (an observation). `info` holds the
outcome: exit_status, patch, resolved, tests, turns, tokens, seconds, policy.

As training data (`sft_records`, `cwm agent collect --sft FILE`): the same lines carry a loss
mask per message, the OpenAI fine-tuning key `weight` (1: learned, 0: not), read by
`cwm.tokenizer.prompts.chat_ids` and so by `cwm data pack --input NAME=FILE.jsonl` and the SFT
config:

- assistant turns are learned (weight 1), except one the environment answered with a format
  error (weight 0: a malformed action is not taught);
- observations are not learned, unless `observations` names tools whose results are (a world
  model predicts what `bash` prints: `observations=("bash",)`, or "all"); the whole message is then
  learned, budget block included;
- system and user messages are never learned;
- records are deduplicated by their messages (two identical chats are one record), and by
  default only resolved episodes are kept (rejection sampling).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

FORMAT = "cwm-trajectory-1"
FORMAT_ERROR_PREFIXES = ("FormatError: ", "NoSuchToolError: ")  # user messages that answer a bad action


class TrajectoryError(ValueError):
    """A trajectory file that cannot be read (the message says which line and why)."""


@dataclass
class Trajectory:
    instance_id: str
    messages: list[dict]
    exit_status: str = ""  # submitted | max_turns | max_tokens | policy_error | workspace_error
    patch: str = ""  # the last successfully submitted patch ("" if none)
    resolved: bool | None = None  # None: not graded (no tests, or no patch to grade)
    tests: dict = field(default_factory=dict)  # SWE-bench's report: {FAIL_TO_PASS: {success, failure}, PASS_TO_PASS: ...}
    turns: int = 0  # replies of the policy
    tokens: int = 0  # the episode's tokens as the budget counts them
    seconds: float = 0.0
    policy: str = ""
    message: str = ""  # why it ended, in words (errors)
    diff: str = ""  # the workspace's own diff at the end (what the agent changed, submitted or not)

    def info(self) -> dict:
        d = asdict(self)
        del d["instance_id"], d["messages"]
        return d

    def to_json(self) -> dict:
        return {"format": FORMAT, "instance_id": self.instance_id, "messages": self.messages, "info": self.info()}

    @classmethod
    def from_json(cls, obj: dict) -> "Trajectory":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("messages"), list):
            raise TrajectoryError(f"not a {FORMAT} record")
        info = obj.get("info") or {}
        names = set(cls.__dataclass_fields__)
        return cls(instance_id=str(obj.get("instance_id", "")), messages=obj["messages"],
                   **{k: v for k, v in info.items() if k in names and k not in ("instance_id", "messages")})


def dumps(trajectory: Trajectory) -> str:
    return json.dumps(trajectory.to_json(), ensure_ascii=False)


def write_trajectories(path: str | os.PathLike, trajectories: Iterable[Trajectory]) -> None:
    """Write a JSONL file atomically (a temporary file, fsynced, renamed)."""
    write_jsonl(path, (t.to_json() for t in trajectories))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def read_trajectories(path: str | os.PathLike) -> list[Trajectory]:
    return list(iter_trajectories(path))


def iter_trajectories(path: str | os.PathLike) -> Iterator[Trajectory]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TrajectoryError(f"cannot read trajectories from {path} ({e})") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield Trajectory.from_json(json.loads(line))
        except (json.JSONDecodeError, TrajectoryError, TypeError) as e:
            raise TrajectoryError(f"{path}:{number}: not a trajectory ({e}); `cwm agent run|collect` write them") from None


# ---------------------------------------------------------------------------------------------
# Training data


def _learned_tools(observations) -> set[str] | None:
    """None: every tool's observation is learned; else the set of tool names (maybe empty)."""
    if observations == "all":
        return None
    if observations in (None, "none", ""):
        return set()
    if isinstance(observations, str):
        observations = observations.split(",")
    return {name.strip() for name in observations if name.strip()}


def weighted_messages(messages: list[dict], observations=()) -> list[dict]:
    """The messages with each one's `weight` (the loss mask) set: see the module doc."""
    tools = _learned_tools(observations)
    out = []
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "assistant":
            answer = messages[i + 1] if i + 1 < len(messages) else None
            bad = (answer is not None and answer["role"] == "user"
                   and answer["content"].startswith(FORMAT_ERROR_PREFIXES))
            weight = 0 if bad else 1
        elif role.startswith("tool: "):
            weight = int(tools is None or role.removeprefix("tool: ") in tools)
        else:
            weight = 0
        out.append({"role": role, "content": m["content"], "weight": weight})
    return out


def chat_key(messages: list[dict]) -> str:
    """The content hash that deduplicates records: roles and texts, in order."""
    h = hashlib.sha256()
    for m in messages:
        h.update(json.dumps([m["role"], m["content"]], ensure_ascii=False).encode())
    return h.hexdigest()


def sft_records(trajectories: Iterable[Trajectory], observations=(), resolved_only: bool = True) -> list[dict]:
    """One {"messages", "instance_id", "resolved"} record per distinct chat, ready for `cwm data pack`."""
    seen: set[str] = set()
    records = []
    for t in trajectories:
        if resolved_only and not t.resolved:
            continue
        key = chat_key(t.messages)
        if key in seen:
            continue
        seen.add(key)
        records.append({"messages": weighted_messages(t.messages, observations), "instance_id": t.instance_id,
                        "resolved": t.resolved})
    return records
