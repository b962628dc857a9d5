"""Policies: what writes the agent's replies. A policy is a callable

    policy(messages) -> str

given the chat so far (the release's roles: system, user, assistant, `tool: NAME`; every
assistant turn of the history holds its whole text, `<think>\\n` first) and returning the raw text
of the next assistant turn as the model writes it after the prompt's `<think>\\n`: the reasoning,
`</think>`, then the action (one tool call, or a final answer). A policy that cannot answer (a
server down, a script at its end) raises PolicyError; the loop ends the episode there.

  ScriptedPolicy  replays given replies in order (tests, demonstrations; `oracle_policy` makes the
                  replies that apply a task's known fix and submit it)
  ChatPolicy      any OpenAI-compatible chat endpoint: `cwm serve`, vLLM serving facebook/cwm,
                  the release's fgserve (docs/agent.md: how the chat is sent)
  LocalPolicy     a model directory, generated in this process (cwm.backends.LocalBackend)

A policy may carry `tokenizer` (cwm.tokenizer): the loop counts the token budget with it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

if TYPE_CHECKING:
    from cwm.backends import LocalBackend

from cwm.tokenizer.prompts import THINK_END, THINK_START


class PolicyError(RuntimeError):
    """The policy could not produce a reply (the message says why and what to do)."""


class Policy(Protocol):
    def __call__(self, messages: list[dict]) -> str: ...


# ---------------------------------------------------------------------------------------------
# Scripted


@dataclass
class ScriptedPolicy:
    """Replays `replies` one per turn; a turn past the last raises PolicyError."""

    replies: Sequence[str]
    name: str = "scripted"
    tokenizer: object = None
    _next: int = field(default=0, repr=False)

    def __call__(self, messages: list[dict]) -> str:
        if self._next >= len(self.replies):
            raise PolicyError(f"the {self.name} script has no reply left after {len(self.replies)}")
        self._next += 1
        return self.replies[self._next - 1]

    @classmethod
    def from_file(cls, path: str | Path) -> "ScriptedPolicy":
        """A JSON list of reply strings, or a trajectory file (its first trajectory's assistant
        turns are replayed, `<think>\\n` taken off), or JSONL of {"content": reply}."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyError(f"cannot read the script {path} ({e})") from None
        replies = _script_replies(text)
        if replies is None:
            raise PolicyError(f"{path}: not a script: give a JSON list of replies, a trajectory JSONL "
                              "(cwm agent run writes one), or JSONL lines of {\"content\": reply}")
        return cls(replies, name=f"script {path.name}")


def _script_replies(text: str) -> list[str] | None:
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list) and all(isinstance(r, str) for r in whole):
        return whole
    try:
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        return None
    if lines and all(isinstance(o, dict) for o in lines):
        if isinstance(lines[0].get("messages"), list):  # a trajectory
            return [m["content"].removeprefix(THINK_START) for m in lines[0]["messages"] if m.get("role") == "assistant"]
        if all(isinstance(o.get("content"), str) for o in lines):
            return [o["content"] for o in lines]
    return None


PATCH_FILE = "/tmp/cwm_oracle.patch"  # where the oracle writes the fix (outside the repository)


def oracle_replies(patch: str) -> list[str]:
    """The replies of an agent that knows the fix: apply it with bash, write the diff, submit it,
    then end with a summary (the release's end: a reply without a tool call after a submit)."""
    marker = "CWM_ORACLE_PATCH_" + uuid.uuid5(uuid.NAMESPACE_OID, patch).hex
    body = patch if patch.endswith("\n") else patch + "\n"
    return [
        "I know the fix; apply it to the repository.\n"
        f"{THINK_END}\n<tool: bash>\ngit apply <<'{marker}'\n{body}{marker}\ngit diff > {PATCH_FILE}\n</tool>",
        f"The fix is applied; submit its diff.\n{THINK_END}\n<tool: submit>\n{PATCH_FILE}\n</tool>",
        f"Submitted.\n{THINK_END}\n## Summary\n\nApplied the known fix and submitted it.",
    ]


def oracle_policy(task) -> ScriptedPolicy:
    """The scripted policy that applies `task.patch` (the gold fix) and submits it."""
    if not getattr(task, "patch", ""):
        raise PolicyError(f"task {getattr(task, 'instance_id', '?')} has no known fix (its `patch` is empty); "
                          "the oracle policy needs one")
    return ScriptedPolicy(oracle_replies(task.patch), name="oracle")


# ---------------------------------------------------------------------------------------------
# An OpenAI-compatible chat endpoint


def api_messages(messages: list[dict]) -> list[dict]:
    """The chat as the OpenAI API spells it: `tool: NAME` becomes role "tool" with `name` (vLLM,
    `cwm serve`) and a `tool_call_id` NAME-<32 hex> (the release's fgserve takes the tool's name
    from the id); assistant turns are sent whole (reasoning, `</think>`, action), as the release's
    environment writes them into the context."""
    out = []
    for m in messages:
        role = m["role"]
        if role.startswith("tool: "):
            name = role.removeprefix("tool: ")
            out.append({"role": "tool", "name": name, "tool_call_id": f"{name}-{uuid.uuid4().hex}", "content": m["content"]})
        else:
            out.append({"role": role, "content": m["content"]})
    return out


@dataclass
class ChatPolicy:
    """POST {url}/v1/chat/completions (or {url}/chat/completions: fgserve, a URL ending in /v1).

    No `tools` are sent (the system prompt describes them, as in the release), so the model's
    tool call comes back inside `content`. A reply split into `reasoning_content` (or
    `reasoning`) and `content` is joined back where the release's server splits it:
    reasoning + "\\n</think>\\n" + content (reasoning alone stays alone: an unclosed thought)."""

    url: str
    model: str | None = None
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int | None = None  # per reply; None: the server's default (vLLM: the context left)
    seed: int | None = None
    timeout_s: float = 3600.0
    tokenizer: object = None

    def __call__(self, messages: list[dict]) -> str:
        from cwm.backends import BackendError, chat_completion

        body = {"model": self.model or "cwm", "messages": api_messages(messages), "temperature": self.temperature,
                "top_p": self.top_p, "n": 1,
                # reasoning on: fgserve's switch, and the chat-template switch of vLLM / HF templates
                "reasoning": {"enabled": True}, "chat_template_kwargs": {"enable_thinking": True}}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.seed is not None:
            body["seed"] = self.seed
        try:
            return chat_completion(self.url, body, self.timeout_s)[0]
        except BackendError as e:
            raise PolicyError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# A local model


@dataclass
class LocalPolicy:
    """Generate in this process with a checkpoint directory (cwm.backends.LocalBackend).

    The prompt is the chat's token ids as the release's tokenizer lays them out
    (cwm.tokenizer.prompts.chat_ids, reasoning: the turn opens with `<think>\\n`). A chat longer
    than the model's context minus `max_new_tokens` is cut to its last tokens (the model sees a
    window; the loop's budget still counts the whole chat)."""

    backend: LocalBackend
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 4096
    seed: int | None = 0
    _turn: int = field(default=0, repr=False)

    @classmethod
    def from_dir(cls, path: str | Path, device: str = "cpu", **kwargs) -> "LocalPolicy":
        from cwm.backends import LocalBackend

        return cls(LocalBackend.from_dir(path, device=device), **kwargs)

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    def __call__(self, messages: list[dict]) -> str:
        from cwm.backends import Sampling
        from cwm.tokenizer.prompts import chat_ids

        tok = self.backend.tokenizer
        ids = chat_ids(tok, messages, add_generation_prompt=True, reasoning=True)[0]
        context = int(getattr(self.backend, "context_length", 0) or 0)
        new = self.max_new_tokens if not context else min(self.max_new_tokens, max(1, context // 4))
        if context and len(ids) + new > context:
            ids = ids[len(ids) + new - context:]
        seed = None if self.seed is None else self.seed + self._turn  # each turn its own draw, reproducibly
        self._turn += 1
        out = self.backend.complete(ids, sampling=Sampling(self.temperature, self.top_p, new, seed))
        tokens = out.tokens[:-1] if out.tokens and out.tokens[-1] in tok.stop_ids else out.tokens
        return tok.decode(tokens)


def open_policy(spec: str, task=None, tokenizer: str | None = None, device: str = "cpu",
                temperature: float = 1.0, top_p: float = 0.95, max_tokens: int | None = None,
                seed: int | None = 0) -> Callable[[list[dict]], str]:
    """The policy a CLI's --policy names: `oracle` (needs the task), a script file (.json/.jsonl),
    an http(s) URL (a chat endpoint; --tokenizer DIR counts its budget exactly), or a model directory."""
    if spec == "oracle":
        if task is None:
            raise PolicyError("--policy oracle needs a task with its known fix (a task file, not a repo dir)")
        return oracle_policy(task)
    if spec.startswith(("http://", "https://")):
        tok = None
        if tokenizer:
            from cwm.tokenizer import load_tokenizer

            tok = load_tokenizer(tokenizer)
        return ChatPolicy(spec, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed, tokenizer=tok)
    path = Path(spec)
    if path.is_file():
        return ScriptedPolicy.from_file(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PolicyError(f"--policy {spec}: a directory without config.json is not a model checkpoint")
        kwargs = {"temperature": temperature, "top_p": top_p, "seed": seed}
        if max_tokens is not None:
            kwargs["max_new_tokens"] = max_tokens
        return LocalPolicy.from_dir(path, device=device, **kwargs)
    raise PolicyError(f"--policy {spec!r}: not `oracle`, an http(s) URL, a script file or a model directory")


def policy_factory(spec: str, tokenizer: str | None = None, device: str = "cpu", temperature: float = 1.0,
                   top_p: float = 0.95, max_tokens: int | None = None) -> Callable[[object, int], Callable[[list[dict]], str]]:
    """make(task, seed) -> a fresh policy per episode, as open_policy names it; a model directory
    is loaded once and shared by all episodes (its backend generates one reply at a time)."""
    shared: dict = {}

    def make(task, seed: int):
        if "local" in shared:
            return replace(shared["local"], seed=seed, _turn=0)
        policy = open_policy(spec, task, tokenizer=tokenizer, device=device, temperature=temperature, top_p=top_p,
                             max_tokens=max_tokens, seed=seed)
        if isinstance(policy, LocalPolicy):
            shared["local"] = policy
        return policy

    return make
