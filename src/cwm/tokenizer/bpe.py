"""Train a small byte-level BPE with the CWM special tokens, for small models.

Same shape as the official tokenizer, only smaller: Llama-3 pre-tokenization regex, byte-level
BPE (every byte string is encodable, decode(encode(x)) == x), ordinary ids 0..N-1 and the 256
specials at N + k. Saved as a Hugging Face `tokenizer.json`, which `load_tokenizer` and
`transformers.AutoTokenizer` both read.
"""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from cwm.tokenizer.specials import SPECIAL_STRINGS
from cwm.tokenizer.tokenizer import LLAMA3_PATTERN, Tokenizer, TokenizerError, _HFBackend

DEFAULT_VOCAB_SIZE = 4096  # ordinary tokens; + 256 specials = 4352, the small model presets' vocab
MIN_VOCAB_SIZE = 257  # the 256 single bytes, and at least one merge


def corpus_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and the `*.py` files under each directory (sorted, so training is repeatable)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*.py") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise TokenizerError(f"corpus path {p} does not exist")
    if not files:
        raise TokenizerError(f"no corpus files found in {', '.join(map(str, paths))}")
    return files


def default_corpus() -> list[Path]:
    """The Python standard library's own sources: always there, and code."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [f for f in corpus_files([stdlib]) if "site-packages" not in f.relative_to(stdlib).parts]


def _read_texts(files: list[Path]) -> Iterator[str]:
    for f in files:
        yield f.read_text(encoding="utf-8", errors="replace")  # a stray latin-1 file is still text


def train_bpe(
    files_or_iterator: str | os.PathLike | Iterable[str | os.PathLike] | Iterator[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    out_dir: str | os.PathLike | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train on files (a path, or a list/tuple of file and directory paths) or on an iterator of
    texts; `vocab_size` ordinary tokens, then the 256 specials. Saved to `out_dir` if given."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(f"vocab size {vocab_size} is too small; it must be at least {MIN_VOCAB_SIZE}")
    if isinstance(files_or_iterator, (str, os.PathLike)):
        files_or_iterator = [files_or_iterator]
    if isinstance(files_or_iterator, (list, tuple)):
        files = corpus_files(files_or_iterator)
        texts, length = _read_texts(files), len(files)
    else:
        texts, length = iter(files_or_iterator), None

    hf = tokenizers.Tokenizer(models.BPE(ignore_merges=True))  # as Llama-3's tokenizer.json
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=show_progress,
    )
    hf.train_from_iterator(texts, trainer, length=length)
    learned = hf.get_vocab_size()
    if learned != vocab_size:
        raise TokenizerError(
            f"the corpus only supports {learned} tokens, fewer than the {vocab_size} asked for; "
            "give a larger corpus or a smaller vocab size"
        )
    # The specials come after the ordinary tokens, in offset order: id = vocab_size + k.
    hf.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False) for s in SPECIAL_STRINGS])
    tok = Tokenizer(_HFBackend(json.loads(hf.to_str()), "trained tokenizer"))
    if out_dir is not None:
        tok.save(out_dir)
    return tok
