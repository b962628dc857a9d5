"""Prompt builders everyone uses: chat (with the SFT loss mask) and trace prediction.

Traces are encoded from the tracer's own rendering, `cwm.trace.format.to_cwm_pieces(trace)`
((text, is_special) pieces; the format lives there only). Adjacent text pieces are joined before
encoding, so the ids are those of the whole CWM text with its special tokens as specials, and no
BPE token ever crosses a special token; hence each frame's ids stand alone.

Chat follows the release's `CWMInstructTokenizer` (cwm/text/tokenizers.py) token for token:

    <|begin_of_text|> then per message
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>

where the role, the "\\n\\n" and the content are encoded as separate texts, content is stripped
(except for tool results, and an unfinished assistant turn), and in assistant content the
strings <|reasoning_thinking_start|> / <|reasoning_thinking_end|> are special tokens (the release
encodes assistant bodies so, for SFT on reasoning data); all other text is ordinary text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cwm.tokenizer.specials import (
    BEGIN_OF_TEXT,
    END_HEADER,
    EOT,
    START_HEADER,
    THINKING_END,
    THINKING_START,
)
from cwm.tokenizer.tokenizer import Tokenizer, TokenizerError
from cwm.trace.format import FRAME_SEP, Trace, to_cwm_pieces  # the layer below: the trace format

ROLES = ("system", "user", "assistant", "tool")
THINK_START = "<think>\n"  # reasoning mode: the generation prompt ends with this
THINK_END = "</think>"
DEFAULT_DESCRIPTION = "You are a helpful AI assistant."
_REASONING_FORMAT = """ You always reason before responding, using the following format:

<think>
your internal reasoning
</think>
your external response"""


def system_prompt(reasoning: bool = False, description: str = DEFAULT_DESCRIPTION, environment: str | None = None) -> str:
    """The release's system prompt (cwm/rl/envs/prompts.py): description, the reasoning format
    when `reasoning`, then an "# Environment" section (tool descriptions and such) if given."""
    prompt = (description + _REASONING_FORMAT if reasoning else description).strip()
    if environment and environment.strip():
        prompt += "\n\n# Environment\n\n" + environment.strip()
    return prompt


def _role(message: dict, index: int) -> str:
    role = message.get("role")
    if role == "tool":
        if not message.get("name"):
            raise TokenizerError(f"message {index}: a tool message needs a 'name' (the tool's name)")
        return f"tool: {message['name']}"
    if role in ROLES or (isinstance(role, str) and role.startswith("tool: ")):
        return role
    raise TokenizerError(
        f"message {index}: unknown role {role!r}; use system, user, assistant, or tool with a 'name'"
    )


def _thinking_pieces(text: str) -> list[tuple[str, bool]]:
    """Split assistant text so that the two reasoning-thinking strings become special pieces."""
    pieces: list[tuple[str, bool]] = []
    for i, part in enumerate(text.split(THINKING_START)):
        if i:
            pieces.append((THINKING_START, True))
        for j, sub in enumerate(part.split(THINKING_END)):
            if j:
                pieces.append((THINKING_END, True))
            pieces.append((sub, False))
    return pieces


def _header(role: str) -> list[tuple[str, bool]]:
    return [(START_HEADER, True), (role, False), (END_HEADER, True), ("\n\n", False)]


def chat_ids(
    tok: Tokenizer,
    messages: Sequence[dict],
    add_generation_prompt: bool = True,
    reasoning: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids of a chat and its loss mask (1 on the content and closing <|eot_id|> of each
    assistant turn, 0 elsewhere, headers included).

    messages: dicts with "role" (system, user, assistant, or tool with "name", or "tool: NAME")
    and "content", and optionally "weight" (0 or 1: whether the message's content and <|eot_id|>
    are learned; default 1 for assistant turns, 0 for the others). With add_generation_prompt,
    the ids end ready for the model to write the next assistant turn: after an assistant header
    (plus "<think>\\n" when `reasoning`), or, if the last message is the assistant's, inside that
    turn (it is continued, not closed). Without it,
    every turn is closed: the form for SFT (`reasoning` then changes nothing; reasoning data
    carries its own "<think>\n...</think>" in the assistant content).
    """
    ids, mask = [tok.bos_id], [0]

    def add(pieces: Iterable[tuple[str, bool]], learn: bool) -> None:
        new = tok.encode_pieces(pieces)
        ids.extend(new)
        mask.extend([int(learn)] * len(new))

    for i, message in enumerate(messages):
        role = _role(message, i)
        content = message.get("content") or ""
        is_assistant = role == "assistant"
        unfinished = add_generation_prompt and is_assistant and i == len(messages) - 1
        if not role.startswith("tool: ") and not unfinished:
            content = content.strip()
        add(_header(role), learn=False)
        body = _thinking_pieces(content) if is_assistant else [(content, False)]
        learn = bool(message.get("weight", 1 if is_assistant else 0))  # the OpenAI fine-tuning key
        add(body if unfinished else [*body, (EOT, True)], learn=learn)

    last_is_assistant = bool(messages) and messages[-1].get("role") == "assistant"
    if add_generation_prompt and not last_is_assistant:
        add(_header("assistant"), learn=False)
        if reasoning:
            add([(THINK_START, False)], learn=False)
    elif reasoning and add_generation_prompt:
        raise TokenizerError("reasoning=True needs a new assistant turn; the last message is already the assistant's")
    return ids, mask


# ---- traces ------------------------------------------------------------------------------------


@dataclass
class TraceIds:
    prompt: list[int]  # <|begin_of_text|><|trace_context_start|>{SOURCE}<|frame_sep|>
    frames: list[list[int]]  # one list per frame, each ending with <|frame_sep|>
    end: list[int]  # what follows the last frame: [<|end_of_text|>] for a finished trace

    def all(self) -> list[int]:
        return [*self.prompt, *(t for frame in self.frames for t in frame), *self.end]


def _joined(pieces: Iterable[tuple[str, bool]]) -> list[tuple[str, bool]]:
    out: list[tuple[str, bool]] = []
    for text, special in pieces:
        if out and not special and not out[-1][1]:
            out[-1] = (out[-1][0] + text, False)
        else:
            out.append((text, special))
    return out


def split_trace_ids(tok: Tokenizer, pieces: Iterable[tuple[str, bool]]) -> TraceIds:
    """Encode the pieces of a CWM trace text and cut the ids into prompt, frames and end."""
    pieces = _joined(pieces)
    if not pieces or pieces[0] != (BEGIN_OF_TEXT, True):
        raise TokenizerError(f"trace pieces must start with {BEGIN_OF_TEXT}")
    ids = tok.encode_pieces(pieces)
    cuts = [i + 1 for i, t in enumerate(ids) if t == tok.frame_sep_id]  # ends of prompt and frames
    if not cuts:
        raise TokenizerError(f"trace pieces have no {FRAME_SEP} closing the prompt")
    frames = [ids[a:b] for a, b in zip(cuts, cuts[1:])]
    return TraceIds(prompt=ids[: cuts[0]], frames=frames, end=ids[cuts[-1]:])


def _trace_pieces(trace_or_source) -> list[tuple[str, bool]]:
    if isinstance(trace_or_source, str):  # a context (with its START_OF_TRACE marker), no frames yet
        trace_or_source = Trace(source=trace_or_source, entry="", frames=[])
    return to_cwm_pieces(trace_or_source)


def trace_ids(tok: Tokenizer, trace) -> list[int]:
    """The whole trace document: prompt, frames, and <|end_of_text|> if the trace finished."""
    return split_trace_ids(tok, _trace_pieces(trace)).all()


def trace_prompt_ids(tok: Tokenizer, trace_or_source) -> list[int]:
    """The trace-prediction prompt of a Trace, or of a source text that carries the marker."""
    return split_trace_ids(tok, _trace_pieces(trace_or_source)).prompt


def trace_frames_ids(tok: Tokenizer, trace) -> list[list[int]]:
    """Each frame's ids (ending with <|frame_sep|>), as the model predicts them one at a time."""
    return split_trace_ids(tok, _trace_pieces(trace)).frames
