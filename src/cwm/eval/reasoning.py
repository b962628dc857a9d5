"""The release's reasoning evaluations, shared: the chat, the one `</think>`, samples, pass@k.

A task (cwm.eval.codegen, cwm.eval.mathbench) says how to prompt one problem, how to pull the
answer out of the text after `</think>`, and how to score it (in the sandbox). This module asks
the model and keeps the books:

- the prompt is a chat as the release builds it (cwm/rl/envs/envs/lcb.py, math_think_dialog.py):
  the reasoning system prompt (cwm/rl/envs/prompts.py), the user's message, and the generation
  starts after the assistant header with `<think>\\n`;
- the output must hold exactly one `</think>`; the answer is the text after it (stripped). No
  `</think>`, or more than one, is a wrong sample (the release's math env: "Occurrence of
  </think> is not 1"), as is an answer the task cannot extract;
- sampling as the release's configs (evals/configs/eval_*.yaml): temperature 1.0, top_p 0.95,
  K samples per problem (sample i gets seed + i); pass@1 is averaged over the samples, pass@k is
  the unbiased estimator (cwm.eval.cruxeval.pass_at_k, as cwm/rl/envs/outcomes.py).

Two ways to reach a model (`Chat`):
  TokenChat   builds the chat's token ids here (cwm.tokenizer.prompts.chat_ids, reasoning=True)
              and continues them with a backend: a local checkpoint, or a server's /completions
              (`cwm serve`, the release's fgserve) given token ids.
  OpenAIChat  any OpenAI-compatible chat API (vLLM serving facebook/cwm; the release's fgserve):
              POST {url}/v1/chat/completions with the messages; the server's chat template adds
              the `<think>\\n`. A reply split into `reasoning_content` (or `reasoning`) and
              `content` is joined back as reasoning + "\\n</think>\\n" + content (fgserve splits there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from cwm.tokenizer.prompts import THINK_END, system_prompt

if TYPE_CHECKING:
    from cwm.backends import Backend

SYSTEM_PROMPT = system_prompt(reasoning=True)  # "You are a helpful AI assistant. You always reason ..."
TEMPERATURE, TOP_P = 1.0, 0.95  # evals/configs/eval_lcb.yaml, eval_math.yaml
MAX_NEW_TOKENS = 65536  # the release's envs are registered as ":64k" (max_action_len 65536)


def messages_for(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def split_reasoning(raw: str) -> tuple[str | None, str | None]:
    """(reasoning, answer) when `raw` holds exactly one `</think>`; (None, None) otherwise."""
    if raw.count(THINK_END) != 1:
        return None, None
    reasoning, answer = raw.split(THINK_END)
    return reasoning.strip(), answer.strip()


@dataclass
class Reply:
    text: str  # the raw output, from after the "<think>\n" of the prompt to before the stop token
    tokens: int  # generated tokens (0 where the server does not say)
    prompt_tokens: int = 0


class Chat(Protocol):
    def reply(self, messages: list[dict], sampling) -> Reply: ...


@dataclass
class TokenChat:
    """A chat continued as token ids by a backend (cwm.backends: local, or a server's /completions)."""

    backend: Backend

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from cwm.tokenizer.prompts import chat_ids

        return chat_ids(self.backend.tokenizer, messages, add_generation_prompt=True, reasoning=True)[0]

    def reply(self, messages, sampling) -> Reply:
        from cwm.backends import fit

        ids = self.prompt_ids(messages)
        out = self.backend.complete(ids, stop=[], sampling=fit(self.backend, len(ids), sampling))
        tok = self.backend.tokenizer
        tokens = out.tokens[:-1] if out.tokens and out.tokens[-1] in tok.stop_ids else out.tokens
        return Reply(text=tok.decode(tokens), tokens=len(out.tokens), prompt_tokens=len(ids))


@dataclass
class OpenAIChat:
    """POST /v1/chat/completions (or /chat/completions, the release's fgserve, where /v1 is 404)."""

    url: str
    model: str | None = None
    timeout_s: float = 3600.0

    def reply(self, messages, sampling) -> Reply:
        from cwm.backends import chat_completion

        body = {"model": self.model or "cwm", "messages": messages, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "n": 1,
                # reasoning on: fgserve's switch, and the chat-template switch of vLLM / HF templates
                "reasoning": {"enabled": True}, "chat_template_kwargs": {"enable_thinking": True}}
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        text, usage = chat_completion(self.url, body, self.timeout_s)
        return Reply(text=text, tokens=int(usage.get("completion_tokens") or 0),
                     prompt_tokens=int(usage.get("prompt_tokens") or 0))


class Task(Protocol):
    name: str

    def key(self, item: dict) -> str: ...
    def prompt(self, item: dict) -> str: ...  # the user message
    def gold(self, item: dict): ...  # what the results file shows as the reference
    def extract(self, answer: str) -> str | None: ...  # from the text after </think>
    def score(self, item: dict, extracted: str) -> tuple[bool, str]: ...  # (correct, why)


def sample_once(task: Task, chat: Chat, item: dict, sampling) -> dict:
    from cwm.backends import TooLong

    started = time.time()
    try:
        reply = chat.reply(messages_for(task.prompt(item)), sampling)
    except TooLong as e:
        return {"raw": "", "answer": None, "correct": False, "verdict": str(e), "failed": True,
                "seconds": round(time.time() - started, 3), "tokens": 0}
    generated = time.time()
    reasoning, after = split_reasoning(reply.text)
    if after is None:
        n = reply.text.count(THINK_END)
        extracted, correct, verdict = None, False, f"{n} '{THINK_END}' in the output (exactly one is needed)"
    else:
        extracted = task.extract(after)
        if extracted is None:
            correct, verdict = False, "no answer found after </think>"
        else:
            correct, verdict = task.score(item, extracted)
    return {"raw": reply.text, "answer": extracted, "correct": bool(correct), "verdict": verdict, "failed": False,
            "seconds": round(generated - started, 3), "score_seconds": round(time.time() - generated, 3),
            "tokens": reply.tokens, "reasoning_chars": len(reasoning or "")}


def run_reasoning(task: Task, chat: Chat, items: list[dict], samples: int, sampling, log=None) -> dict:
    """Each problem `samples` times; with a log (cwm.eval.run.ResultsLog) each problem is written
    as it is done and problems already there are not asked again."""
    from cwm.eval.cruxeval import pass_at_k
    from cwm.eval.run import items_to_do, progress

    done, todo = items_to_do(items, log, key=task.key)
    fresh = {}
    for item in progress(todo, task.name, done=len(done)):
        tries = []
        for s in range(samples):
            seeded = replace(sampling, seed=None if sampling.seed is None else sampling.seed + s)
            tries.append(sample_once(task, chat, item, seeded))
        key = task.key(item)
        fresh[key] = result = {"id": key, "prompt": messages_for(task.prompt(item)), "gold": task.gold(item),
                               "samples": tries, "correct": sum(t["correct"] for t in tries),
                               "failed": all(t["failed"] for t in tries)}
        if log is not None:
            log.add(result)
    results = [fresh.get(task.key(item)) or log.done[str(task.key(item))] for item in items]
    n = len(results)
    aggregates = {f"pass@{k}": sum(pass_at_k(samples, r["correct"], k) for r in results) / n if n else 0.0
                  for k in pass_ks(samples)}
    every = [t for r in results for t in r["samples"]]
    aggregates["problems"] = n
    aggregates["samples"] = len(every)
    aggregates["no_think_end"] = sum(t["answer"] is None and "'</think>'" in t["verdict"] for t in every)
    aggregates["no_answer"] = sum(t["verdict"] == "no answer found after </think>" for t in every)
    aggregates["failed"] = sum(r["failed"] for r in results)
    return {"task": task.name, "mode": "reasoning", "headline": "pass@1", "aggregates": aggregates, "items": results}


def pass_ks(samples: int) -> list[int]:
    """pass@1, pass@5, pass@10 where there are samples enough, and pass@K for K samples."""
    return sorted({k for k in (1, 5, 10) if k <= samples} | {samples})
