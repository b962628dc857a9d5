"""Model backends: one small interface shared by the debugger, the evaluations and the agent.

    backend.complete(prompt, stop=..., sampling=...) -> Completion

continues a prompt (token ids, or text that is encoded as ordinary text after <|begin_of_text|>)
until a stop token of the model, a stop string, or `max_new_tokens`. A stop string that is
exactly a special token (such as "<|frame_sep|>") stops at that token. As in the release's
server, the returned tokens include the stop token that ended them.

Implementations:
  LocalBackend   a checkpoint directory, generating with cwm.model in this process
  HTTPBackend    a `cwm serve` server, or any server with the release's /completions endpoint
                 (the release's fgserve: see HTTPBackend for what differs)
  OracleBackend  (cwm.eval.oracle) replays a real trace; the reference that scores 1.0
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

if TYPE_CHECKING:
    from cwm.model import Transformer
    from cwm.model.cache import KVCache
    from cwm.tokenizer import Tokenizer


# Why a server cannot take a Sampling.constraint (a Python callable run on each token here).
CONSTRAINT_NEEDS_LOCAL = "--constrain-actions runs in this process: give a local model (--model DIR), not --server"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    # Constrained decoding: tokens generated so far -> the ids allowed next (None: any), e.g.
    # tracetext.ActionLines. Local models only; a server refuses it (it cannot run our code).
    constraint: Callable[[list[int]], Sequence[int] | None] | None = None

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise ValueError(
                f"bad sampling settings {self}: need temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1"
            )


@dataclass
class Completion:
    tokens: list[int]  # the generated ids, ending with the stop token when one ended them
    text: str  # the tokens decoded, special tokens written out
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int = 0


class TooLong(ValueError):
    """The prompt leaves no room in the model's context to generate anything."""

    def __init__(self, prompt_tokens: int, context: int):
        self.prompt_tokens, self.context = prompt_tokens, context
        relation = ">" if prompt_tokens > context else "="
        super().__init__(f"prompt longer than the context ({prompt_tokens} {relation} {context} tokens)")


def context_of(backend) -> int | None:
    """The model's context in tokens; None where the backend does not say (then nothing is checked)."""
    context = getattr(backend, "context_length", None)
    return int(context) if context else None


def fit(backend, prompt_tokens: int, sampling: Sampling) -> Sampling:
    """`sampling` with max_new_tokens capped at the context left after the prompt (the evaluations
    and the debugger ask this before each generation). Raises TooLong when the prompt alone fills
    the context."""
    context = context_of(backend)
    if context is None:
        return sampling
    if prompt_tokens >= context:
        raise TooLong(prompt_tokens, context)
    return dataclasses.replace(sampling, max_new_tokens=min(sampling.max_new_tokens, context - prompt_tokens))


class Backend(Protocol):
    tokenizer: Tokenizer  # what prompts are encoded with

    def complete(
        self, prompt: Sequence[int] | str, stop: Sequence[str] = (), sampling: Sampling = Sampling()
    ) -> Completion: ...


class BackendError(RuntimeError):
    """The backend could not answer (server down, bad reply); the message says what to do."""


def split_stops(tokenizer, stop: Sequence[str]) -> tuple[set[int], list[str]]:
    """Stop strings that are special tokens become ids; the rest stay strings."""
    from cwm.tokenizer.specials import SPECIAL_TOKENS

    ids = set(tokenizer.stop_ids)
    ids.update(tokenizer.special_id(s) for s in stop if s in SPECIAL_TOKENS)
    return ids, [s for s in stop if s not in SPECIAL_TOKENS]


def encode_prompt(tokenizer, prompt: Sequence[int] | str) -> list[int]:
    """Token ids as given; text as ordinary text (no specials parsed) after <|begin_of_text|>."""
    if isinstance(prompt, str):
        from cwm.tokenizer.specials import BEGIN_OF_TEXT

        return [tokenizer.special_id(BEGIN_OF_TEXT)] + list(tokenizer.encode(prompt))
    return [int(t) for t in prompt]


@dataclass
class LocalBackend:
    """Generate with a local checkpoint. One generation at a time (a lock), so threads may share it.

    reuse_prefix: keep the KV cache of the last request, so that a prompt that starts with it
    (the debugger's next step: the same prompt plus the frame just predicted) computes only its
    new tokens. The results are the same token for token; the cache stays allocated between calls
    (see `kv_cache_bytes`). compile: decode with the torch.compile'd step (docs/model.md, Speed).
    """

    model: Transformer
    tokenizer: Tokenizer
    device: str = "cpu"
    reuse_prefix: bool = True
    compile: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cache: KVCache | None = field(default=None, repr=False)

    @classmethod
    def from_dir(cls, path, device: str = "cpu") -> "LocalBackend":
        from cwm.model import load_pretrained
        from cwm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(path)
        model = load_pretrained(path, device=device).eval()
        if model.cfg.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"{path}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
                f"{model.cfg.vocab_size}; the checkpoint's tokenizer files do not belong to its model"
            )
        return cls(model=model, tokenizer=tokenizer, device=device)

    @property
    def context_length(self) -> int:
        return int(self.model.cfg.max_seq_len)

    def _kept_cache(self, needed: int):
        """The kept KV cache, grown (and so emptied) when `needed` tokens do not fit: to twice the
        old size or what is needed, at least 1024, at most the context."""
        from cwm.model.cache import KVCache

        if self._cache is None or self._cache.max_len < needed:
            old = 0 if self._cache is None else self._cache.max_len
            size = min(self.context_length, max(needed, 2 * old, 1024))
            param = next(self.model.parameters())
            self._cache = None  # free the old one first
            self._cache = KVCache(self.model.cfg, 1, size, device=param.device, dtype=param.dtype)
        return self._cache

    def complete(self, prompt, stop=(), sampling=Sampling(), on_token=None) -> Completion:
        """on_token(token), if given, is called as each token is kept (after the stop checks);
        an exception it raises ends the generation and propagates (the server uses it to stream
        tokens and to stop for a client that hung up)."""
        from cwm.model import generate

        ids = encode_prompt(self.tokenizer, prompt)
        stop_ids, strings = split_stops(self.tokenizer, stop)
        with self._lock:  # one generation at a time: the model and its caches are not shared
            cache = self._kept_cache(len(ids) + sampling.max_new_tokens) if self.reuse_prefix else None
            tokens = generate(
                self.model, ids, sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                stop_tokens=sorted(stop_ids), stop_strings=strings, decode=self.tokenizer.decode, seed=sampling.seed,
                on_token=None if on_token is None else lambda row, token: on_token(token),
                cache=cache, compile=self.compile, allowed=sampling.constraint,
            )
        text = self.tokenizer.decode(tokens)
        stopped = bool(tokens) and (tokens[-1] in stop_ids or any(s in text for s in strings))
        return Completion(tokens=tokens, text=text, finish_reason="stop" if stopped else "length", prompt_tokens=len(ids))


# Sent instead of temperature 0 (greedy) to a server that is not `cwm serve`: the release's fgserve
# divides the logits by the temperature. At 1e-3 a logit gap of 0.01 is already e^-10 in
# probability (greedy in practice), and logits / 1e-3 still fit a float16.
NEAR_GREEDY_TEMPERATURE = 1e-3
CWM_SERVE = "cwm serve"  # what `cwm serve` answers as "server" on GET /health


@dataclass
class HTTPBackend:
    """Talk to a server with the release's /completions endpoint (`cwm serve`, the release's fgserve).

    Two things differ between servers, and neither is taken on trust:
    - whether a completion ended at a stop is read from the returned tokens and text (the last
      token is a stop token, or the text holds a stop string), never from `finish_reason`:
      the release's fgserve answers "length" for every choice;
    - temperature 0 means greedy only on `cwm serve` (known by its GET /health answer, asked
      once); any other server gets NEAR_GREEDY_TEMPERATURE instead (fgserve divides by it).
    """

    url: str
    tokenizer: Tokenizer
    timeout_s: float = 600.0
    greedy_ok: bool | None = None  # temperature 0 is greedy there; None: ask the server's /health
    context_length: int | None = None  # the server's context in tokens; None: unknown, not checked

    def is_cwm_serve(self) -> bool:
        import httpx

        if self.greedy_ok is None:
            try:
                reply = httpx.get(self.url.rstrip("/") + "/health", timeout=min(self.timeout_s, 10.0))
                self.greedy_ok = reply.status_code == 200 and reply.json().get("server") == CWM_SERVE
            except (httpx.HTTPError, ValueError, AttributeError):  # no /health, not JSON, not an object
                self.greedy_ok = False
        return self.greedy_ok

    def complete(self, prompt, stop=(), sampling=Sampling()) -> Completion:
        import httpx

        if sampling.constraint is not None:
            raise BackendError(CONSTRAINT_NEEDS_LOCAL)
        temperature = sampling.temperature
        if temperature == 0 and not self.is_cwm_serve():
            temperature = NEAR_GREEDY_TEMPERATURE
        body = {
            "prompt": prompt if isinstance(prompt, str) else [int(t) for t in prompt],
            "max_tokens": sampling.max_new_tokens,
            "temperature": temperature,
            "top_p": sampling.top_p,
            # one stop as a plain string: the release's server accepts only `str | None`
            "stop": stop[0] if len(stop) == 1 else (list(stop) or None),
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        endpoint = self.url.rstrip("/") + "/completions"
        try:
            reply = httpx.post(endpoint, json=body, timeout=self.timeout_s)
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach {endpoint} ({e}); is `cwm serve` running there?") from e
        if reply.status_code != 200:
            raise BackendError(f"{endpoint} answered {reply.status_code}: {reply.text[:500]}")
        try:
            body = reply.json()
            choice = body["choices"][0]
            tokens = [int(t) for t in choice["tokens"]]
            text = choice.get("text")
            text = text if isinstance(text, str) else self.tokenizer.decode(tokens)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise BackendError(
                f"{endpoint} did not answer like the release's /completions (choices[0].tokens): {e!r}"
            ) from None
        stop_ids, strings = split_stops(self.tokenizer, stop)
        stopped = (bool(tokens) and tokens[-1] in stop_ids) or any(s in text for s in strings)
        usage = body.get("usage")
        return Completion(
            tokens=tokens, text=text, finish_reason="stop" if stopped else "length",
            prompt_tokens=usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0,
        )


def chat_completion(url: str, body: dict, timeout_s: float) -> tuple[str, dict]:
    """POST an OpenAI chat request `body` to {url}/v1/chat/completions, or {url}/chat/completions
    (the release's fgserve, where /v1 is 404; a URL ending in /v1): (the reply's text, its usage).

    A reply split into `reasoning_content` (or vLLM's `reasoning`) and `content` is joined back
    where the release's server splits it: reasoning + "\n</think>\n" + content; a thought that was
    never closed (all reasoning, no content) gets no `</think>` it never wrote. A leading
    "<think>\n" (a template that leaves it to the model) is dropped. Errors: BackendError."""
    import httpx

    from cwm.tokenizer.prompts import THINK_END, THINK_START

    base = url.rstrip("/")
    paths = ["/chat/completions"] if base.endswith("/v1") else ["/v1/chat/completions", "/chat/completions"]
    for path in paths:
        endpoint = base + path
        try:
            answer = httpx.post(endpoint, json=body, timeout=timeout_s)
        except httpx.HTTPError as e:
            raise BackendError(f"cannot reach {endpoint} ({type(e).__name__}: {e}); is an OpenAI-compatible "
                               "server running there?") from None
        if answer.status_code != 404:
            break
    if answer.status_code != 200:
        raise BackendError(f"{endpoint} answered {answer.status_code}: {answer.text[:500]}")
    try:
        data = answer.json()
        message = data["choices"][0]["message"]
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content")
        reasoning = message.get("reasoning") if reasoning is None else reasoning
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise BackendError(f"{endpoint} did not answer like the OpenAI chat API (choices[0].message): {e!r}") from None
    if not isinstance(content, str) or (reasoning is not None and not isinstance(reasoning, str)):
        raise BackendError(f"{endpoint}: choices[0].message.content is not text")
    if reasoning is None:
        text = content
    else:
        text = reasoning + "\n" + THINK_END + "\n" + content if content else reasoning
    return text.removeprefix(THINK_START), usage


def open_backend(model: str | None = None, server: str | None = None, tokenizer: str | None = None,
                 device: str = "cpu", context: int | None = None, threads: int | None = None) -> Backend:
    """The backend named by CLI flags: --model DIR, or --server URL with --tokenizer DIR; neither
    is the shipped cwm-mini (cwm.models), whose tokenizer also serves a --server without one.
    `context`: a server's context in tokens (a local model's is its own). `threads`: torch's CPU
    threads for a local model (None: torch's default, every core)."""
    from cwm.models import default_model

    if model and server:
        raise ValueError("give one of --model DIR (a local checkpoint) or --server URL, not both")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, not {threads}")
    if not server:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        return LocalBackend.from_dir(model or default_model(), device=device)
    from cwm.tokenizer import load_tokenizer

    return HTTPBackend(url=server, tokenizer=load_tokenizer(tokenizer or default_model()), context_length=context)
