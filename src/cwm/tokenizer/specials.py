"""The one table of CWM special tokens.

The release (facebookresearch/cwm, `cwm/text/tokenizers.py`) places 256 special tokens after the
ordinary BPE ranks: special number k (its *offset*, 0 <= k < 256) gets id `len(ranks) + k`, which
is 128000 + k for the Llama-3 vocabulary. The named ones below are the release's; every other
offset k is `<|reserved_special_token_k|>`, numbered by its offset (CWM's convention, not
Llama-3's, whose reserved counter skips the named tokens). See docs/tokenizer.md.

The strings a trace is written with are spelled in cwm.trace.tokens (the layer below) and only
imported here; this module imports nothing else.
"""

from __future__ import annotations

from cwm.trace.tokens import (
    ACTION_SEP,
    ARG_SEP,
    BEGIN_OF_TEXT,
    CALL_SEP,
    END_OF_TEXT,
    EXCEPTION_SEP,
    FRAME_SEP,
    LINE_SEP,
    RETURN_SEP,
    TRACE_CONTEXT_START,
)  # fmt: skip

NUM_SPECIAL_TOKENS = 256
RELEASE_SPECIAL_BASE = 128000  # ordinary ranks in the release's Llama-3 vocabulary

PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOM = "<|eom_id|>"
EOT = "<|eot_id|>"  # ends a chat turn
THINKING_START = "<|reasoning_thinking_start|>"
THINKING_END = "<|reasoning_thinking_end|>"

NAMED_OFFSETS: dict[str, int] = {
    BEGIN_OF_TEXT: 0,
    END_OF_TEXT: 1,
    PAD: 4,
    START_HEADER: 6,
    END_HEADER: 7,
    EOM: 8,
    EOT: 9,
    FRAME_SEP: 100,
    ACTION_SEP: 101,
    RETURN_SEP: 102,
    CALL_SEP: 103,
    LINE_SEP: 104,
    EXCEPTION_SEP: 105,
    ARG_SEP: 106,
    TRACE_CONTEXT_START: 107,
    THINKING_START: 120,
    THINKING_END: 121,
}


def _all_specials() -> dict[str, int]:
    by_offset = {k: name for name, k in NAMED_OFFSETS.items()}
    return {by_offset.get(k, f"<|reserved_special_token_{k}|>"): k for k in range(NUM_SPECIAL_TOKENS)}


# token string -> offset k (id = base + k; base = 128000 in the release), in offset order.
SPECIAL_TOKENS: dict[str, int] = _all_specials()
# offset k -> token string
SPECIAL_STRINGS: tuple[str, ...] = tuple(SPECIAL_TOKENS)

# Generation stops at any of these (the release's stop_tokens: eom, eot, end_of_text).
STOP_TOKENS = (END_OF_TEXT, EOM, EOT)


def release_id(token: str) -> int:
    """The token's id in the released 128256-token vocabulary."""
    return RELEASE_SPECIAL_BASE + SPECIAL_TOKENS[token]
