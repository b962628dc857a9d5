"""Text <-> token ids with the CWM special tokens, over either official tokenizer format.

Layout (the release's rule, `cwm/text/tokenizers.py`): ordinary BPE ids are 0..N-1 and special
offset k has id N + k, so the vocabulary is N + 256. The official Llama-3 vocabulary has
N = 128000 (specials 128000..128255); our small BPE defaults to N = 4096 (vocab 4352).

Ordinary text never becomes a special token: `encode("<|frame_sep|>")` spells the characters.
Specials enter a sequence only by id (`special_id`, `encode_pieces`, the prompt builders).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers

from cwm.tokenizer.specials import (
    ACTION_SEP,
    ARG_SEP,
    BEGIN_OF_TEXT,
    CALL_SEP,
    END_HEADER,
    END_OF_TEXT,
    EOM,
    EOT,
    EXCEPTION_SEP,
    FRAME_SEP,
    LINE_SEP,
    NAMED_OFFSETS,
    NUM_SPECIAL_TOKENS,
    PAD,
    RETURN_SEP,
    SPECIAL_STRINGS,
    SPECIAL_TOKENS,
    START_HEADER,
    STOP_TOKENS,
    THINKING_END,
    THINKING_START,
    TRACE_CONTEXT_START,
)

# Llama-3's pre-tokenization regex (the release's DEFAULT_TIKTOKEN_PATTERN).
LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
HF_FILE, TIKTOKEN_FILE, CONFIG_FILE = "tokenizer.json", "tokenizer.model", "tokenizer_config.json"
TOKENIZER_FILES = (HF_FILE, TIKTOKEN_FILE, CONFIG_FILE)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the tokenizer files found in directory `src` into `dst` (e.g. a dataset's tokenizer
    into a checkpoint, so the checkpoint is complete); returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


class TokenizerError(ValueError):
    """A problem the user can fix: a missing or malformed tokenizer file, a bad corpus, ..."""


class _HFBackend:
    """A Hugging Face `tokenizer.json`. Its added tokens are cut out of the encoder, because
    `tokenizers` would otherwise match their strings inside ordinary text."""

    def __init__(self, data: dict, where: str):
        listed = data.get("added_tokens", [])
        if not isinstance(listed, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int) for t in listed
        ):
            raise TokenizerError(
                f"{where}: not a valid Hugging Face tokenizer file (added_tokens must be a list of "
                "{\"content\": str, \"id\": int} objects)"
            )
        added = {t["content"]: t["id"] for t in listed}
        ordinary = dict(data, added_tokens=[], post_processor=None)
        try:
            self.hf = tokenizers.Tokenizer.from_str(json.dumps(ordinary))
        except Exception as e:
            raise TokenizerError(f"{where}: not a valid Hugging Face tokenizer file ({e})") from e
        self.data = data
        self.num_ordinary = self.hf.get_vocab_size(with_added_tokens=False)
        for token, offset in NAMED_OFFSETS.items():  # reserved ones may be named otherwise
            want = self.num_ordinary + offset
            if added.get(token) != want:
                raise TokenizerError(
                    f"{where}: {token} has id {added.get(token)}, expected {want} (ordinary vocab "
                    f"{self.num_ordinary} + offset {offset}); this is not a CWM "
                    "tokenizer — use the checkpoint's own tokenizer.json or `cwm tokenizer train`"
                )

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # the _fast variant skips computing character offsets, which we never use
        return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def save(self, out_dir: Path) -> None:
        _write_atomic(out_dir / HF_FILE, json.dumps(self.data, ensure_ascii=False))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BEGIN_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "pad_token": PAD,
            "clean_up_tokenization_spaces": False,  # decode must give back the exact text
        }
        _write_atomic(out_dir / CONFIG_FILE, json.dumps(config, indent=2))


class _TiktokenBackend:
    """A tiktoken BPE file (`tokenizer.model`: base64 token and rank per line), as the release loads it."""

    MAX_CHARS = 400_000  # the release encodes longer texts in chunks of this many characters

    def __init__(self, ranks: dict[bytes, int], name: str):
        try:
            import tiktoken
        except ImportError as e:
            raise TokenizerError(
                "reading tokenizer.model needs tiktoken: pip install 'cwm[tiktoken]'"
            ) from e
        self.ranks = ranks
        self.num_ordinary = len(ranks)
        self.enc = tiktoken.Encoding(name=name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens={})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        out = []
        for text in texts:
            if len(text) <= self.MAX_CHARS:
                out.append(self.enc.encode_ordinary(text))
            else:
                chunks = [text[i : i + self.MAX_CHARS] for i in range(0, len(text), self.MAX_CHARS)]
                out.append([t for ids in self.enc.encode_ordinary_batch(chunks) for t in ids])
        return out

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def save(self, out_dir: Path) -> None:
        lines = (f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(self.ranks.items(), key=lambda x: x[1]))
        _write_atomic(out_dir / TIKTOKEN_FILE, "".join(lines))


def _read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    # Parsed here rather than by tiktoken.load, which caches files by path name in /tmp.
    ranks = {}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise TokenizerError(f"{path}:{n}: expected 'BASE64_TOKEN RANK', got {line[:80]!r}") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks must be 0..{len(ranks) - 1}, each once")
    return ranks


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Tokenizer:
    """Ordinary BPE ids 0..N-1, then the 256 CWM special tokens at N + k."""

    def __init__(self, backend: _HFBackend | _TiktokenBackend):
        self._backend = backend
        self.num_ordinary = backend.num_ordinary  # N: the first special id
        self.vocab_size = self.num_ordinary + NUM_SPECIAL_TOKENS
        self.bos_id = self.special_id(BEGIN_OF_TEXT)
        self.eos_id = self.special_id(END_OF_TEXT)
        self.pad_id = self.special_id(PAD)
        self.start_header_id = self.special_id(START_HEADER)
        self.end_header_id = self.special_id(END_HEADER)
        self.eom_id = self.special_id(EOM)
        self.eot_id = self.special_id(EOT)
        self.frame_sep_id = self.special_id(FRAME_SEP)
        self.action_sep_id = self.special_id(ACTION_SEP)
        self.return_sep_id = self.special_id(RETURN_SEP)
        self.call_sep_id = self.special_id(CALL_SEP)
        self.line_sep_id = self.special_id(LINE_SEP)
        self.exception_sep_id = self.special_id(EXCEPTION_SEP)
        self.arg_sep_id = self.special_id(ARG_SEP)
        self.trace_context_start_id = self.special_id(TRACE_CONTEXT_START)
        self.thinking_start_id = self.special_id(THINKING_START)
        self.thinking_end_id = self.special_id(THINKING_END)
        self.stop_ids = [self.special_id(t) for t in STOP_TOKENS]

    def __repr__(self) -> str:
        kind = "tiktoken" if isinstance(self._backend, _TiktokenBackend) else "tokenizers"
        return f"Tokenizer({kind}, ordinary={self.num_ordinary}, vocab_size={self.vocab_size})"

    def special_id(self, token: str) -> int:
        """The id of a special token string such as "<|frame_sep|>"."""
        if token not in SPECIAL_TOKENS:
            raise TokenizerError(f"{token!r} is not a CWM special token (see cwm.tokenizer.SPECIAL_TOKENS)")
        return self.num_ordinary + SPECIAL_TOKENS[token]

    def is_special(self, token_id: int) -> bool:
        return self.num_ordinary <= token_id < self.vocab_size

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids; special-token strings in `text` stay plain characters."""
        return self._backend.encode_batch([text])[0]

    def encode_pieces(self, pieces: Iterable[tuple[str, bool]]) -> list[int]:
        """(text, is_special) pieces to ids. Each text piece is encoded on its own, so a BPE token
        never spans two pieces; join adjacent text first if it should be tokenized as one."""
        pieces = list(pieces)
        texts = [text for text, special in pieces if not special and text]
        encoded = iter(self._backend.encode_batch(texts) if texts else [])  # one call for all texts
        ids: list[int] = []
        for text, special in pieces:
            if special:
                ids.append(self.special_id(text))
            elif text:
                ids.extend(next(encoded))
        return ids

    def decode(self, ids: Sequence[int], keep_specials: bool = True) -> str:
        """Ids (a list, tensor or array) to text; special tokens become their strings, or are
        dropped if not keep_specials."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        n = self.num_ordinary
        plain = not ids or (min(ids) >= 0 and max(ids) < n)  # C-speed check for the common case
        cuts = [] if plain else [i for i, t in enumerate(ids) if not 0 <= t < n]  # where specials are
        parts, start = [], 0
        for i in cuts:
            if not self.is_special(ids[i]):
                raise TokenizerError(f"token id {ids[i]} is outside the vocabulary (0..{self.vocab_size - 1})")
            if start < i:  # decode each run of ordinary ids in one call
                parts.append(self._backend.decode(ids[start:i]))
            if keep_specials:
                parts.append(SPECIAL_STRINGS[ids[i] - n])
            start = i + 1
        if start < len(ids):
            parts.append(self._backend.decode(ids[start:]))
        return "".join(parts)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the tokenizer files into a (checkpoint) directory, in the format it was loaded from."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self._backend.save(out_dir)
        return out_dir


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load from a checkpoint directory (tokenizer.json preferred, else tokenizer.model) or either file."""
    path = Path(path)
    if path.is_dir():
        for name in (HF_FILE, TIKTOKEN_FILE):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise TokenizerError(
            f"{path}: no {HF_FILE} or {TIKTOKEN_FILE}; point at a checkpoint directory, "
            "or train a small tokenizer with `cwm tokenizer train`"
        )
    if not path.is_file():
        raise TokenizerError(f"{path}: no such tokenizer file or directory")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(data, dict):
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer file (expected a JSON object)")
        return Tokenizer(_HFBackend(data, str(path)))
    return Tokenizer(_TiktokenBackend(_read_tiktoken_ranks(path), name=path.stem))
