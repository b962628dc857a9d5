"""`cwm tokenizer train|encode`: train a small BPE with the CWM specials; show how text tokenizes."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{train,encode}")
    train = sub.add_parser("train", help="train a byte-level BPE; writes DIR/tokenizer.json")
    train.add_argument(
        "--corpus", nargs="+", metavar="PATH",
        help="text files, or directories (their *.py files); default: the Python standard library's sources",
    )
    train.add_argument("--vocab-size", type=int, default=4096, help="ordinary tokens; the 256 specials come after (default 4096 → vocab 4352)")
    train.add_argument("--out", required=True, metavar="DIR", help="directory to write tokenizer.json into (a checkpoint directory)")
    train.add_argument("--quiet", action="store_true", help="no progress on stderr")

    encode = sub.add_parser("encode", help="print the ids of a text (ordinary text: special-token strings stay text)")
    encode.add_argument("--tokenizer", required=True, metavar="PATH", help="checkpoint directory, tokenizer.json or tokenizer.model")
    encode.add_argument("text", nargs="?", help="the text; default: read standard input")


def run(args: argparse.Namespace) -> int:
    from cwm.tokenizer.tokenizer import TokenizerError

    try:
        return _train(args) if args.action == "train" else _encode(args)
    except (TokenizerError, OSError) as e:
        print(f"cwm tokenizer: error: {e}", file=sys.stderr)
        return 1


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cwm.tokenizer.bpe import corpus_files, default_corpus, train_bpe

    console = Console(stderr=True, quiet=args.quiet)
    files = corpus_files(args.corpus) if args.corpus else default_corpus()
    size = sum(f.stat().st_size for f in files)
    console.print(f"training a {args.vocab_size}-token BPE on {len(files)} files ({size / 1e6:.1f} MB)")
    tok = train_bpe(_read_with_progress(files, console), vocab_size=args.vocab_size, out_dir=args.out)
    console.quiet = False
    console.print(f"wrote {args.out}/tokenizer.json: vocab {tok.vocab_size} "
                  f"(ordinary 0..{tok.num_ordinary - 1}, specials {tok.num_ordinary}..{tok.vocab_size - 1})")
    return 0


def _read_with_progress(files, console):
    """The files' texts, for the trainer, with progress: it counts the words of each text as it
    reads it (most of the time: a bar over the files, with rate and ETA), then computes the merges
    (no way to know how far along that is)."""
    from cwm.progress import Bar
    from cwm.tokenizer.bpe import _read_texts

    with Bar("reading and counting", len(files), "files", enabled=not console.quiet) as bar:
        for text in _read_texts(files):
            yield text
            bar.advance()
    console.print("computing the merges (about a quarter of the time; it has no progress to show)")


def _encode(args: argparse.Namespace) -> int:
    from cwm.tokenizer.tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = sys.stdin.read() if args.text is None else args.text
    ids = tok.encode(text)
    print(" ".join(map(str, ids)))
    print(f"{len(ids)} tokens, {len(text)} characters", file=sys.stderr)
    return 0
