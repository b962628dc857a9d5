"""Tokenize datasets and pack them into fixed-length training sequences (cwm.data.packed).

    pack([PackInput("traces", dir_a, 0.7), PackInput("code", dir_b, 0.3)], tok, out, seq_len=2048)

Inputs are trace datasets and code corpora built by `cwm data build`, or chat/SFT JSONL files
of {"messages": [...]}. Every document becomes (ids, loss_mask):

  traces  the tracer's pieces (`to_cwm_pieces`) through `tok.encode_pieces`, never string-split;
          loss "frames" (default) learns the frames and <|end_of_text|>, not the source context
          (everything up to the first <|frame_sep|>); loss "all" learns every token
  code    <|begin_of_text|> text <|end_of_text|>, learn every token
  chat    `chat_ids`: loss on the assistant turns only
  io      a trace dataset read as code and input/output pairs (`--input io:NAME=PATH:WEIGHT`):
          the problem part of CruxEval's direct prompt with the program's function and call
          (`io_prompt`), then `assert <call> == <output>\n[/ANSWER]`; loss on that answer and
          <|end_of_text|> only. Returning programs only; an io input is shuffled like a trace
          input of the same directory name, so `io:io=D` next to `D` walks the same programs
          in the same order (docs/ablation.md)

Mixture: documents are drawn so that each input's share of tokens follows its weight (the input
furthest below its share goes next); packing stops when an input runs out, so the shares hold,
or at max_tokens. Documents are concatenated into rows of seq_len; one that does not fit
continues in the next row (with whole_docs: starts the next row, and one longer than a row is
dropped); doc_ids number the documents inside each row (for document-causal
masking); the last row is padded with <|pad|> (not learned, a document of its own).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from cwm.data.dataset import read_manifest, read_shard, row_to_trace
from cwm.data.packed import PackedWriter

LOSS_MODES = ("frames", "all")


class PackError(ValueError):
    """A bad --input or a dataset that cannot be packed (the message says what to do)."""


@dataclass(frozen=True)
class PackInput:
    name: str
    path: Path
    weight: float = 1.0
    io: bool = False  # a trace dataset read as input/output pairs (the "io" document kind)

    @classmethod
    def parse(cls, spec: str) -> "PackInput":
        """'NAME=PATH:WEIGHT', 'PATH:WEIGHT' or 'PATH' (the name defaults to the directory name);
        an 'io:' prefix reads a trace dataset as input/output pairs."""
        io = spec.startswith("io:")
        spec = spec.removeprefix("io:")
        name, sep, rest = spec.partition("=")
        if not sep:
            name, rest = "", spec
        path, colon, weight = rest.rpartition(":")
        if not colon or not _is_number(weight):
            path, weight = rest, "1"
        if float(weight) <= 0:
            raise PackError(f"--input {spec!r}: the weight must be positive")
        return cls(name or Path(path).name, Path(path), float(weight), io)

    @property
    def kind(self) -> str:
        if self.path.is_file() and self.path.suffix == ".jsonl":
            kind = "chat"
        elif (self.path / "manifest.json").is_file():
            kind = read_manifest(self.path)["kind"]
        else:
            raise PackError(f"--input {self.path}: not a dataset built by `cwm data build` nor a .jsonl chat file")
        if self.io and kind != "traces":
            raise PackError(f"--input io:{self.path}: io pairs come from a trace dataset, not a {kind} one")
        return "io" if self.io else kind


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# Documents


def trace_document(trace, tok, loss: str = "frames") -> tuple[list[int], list[int]]:
    """Token ids of one trace and their loss mask."""
    from cwm.tokenizer.specials import FRAME_SEP
    from cwm.trace.format import to_cwm_pieces

    ids, mask, in_context = [], [], loss == "frames"
    for text, special in to_cwm_pieces(trace):
        new = tok.encode_pieces([(text, special)])
        ids += new
        mask += [0 if in_context else 1] * len(new)
        if special and text == FRAME_SEP:
            in_context = False  # the context ends with the first <|frame_sep|>
    return ids, mask


def io_pair(row: dict) -> tuple[str, str, str] | None:
    """(function code, call, output repr) of a trace record whose call returned, else None.
    A program entered through main() gives the function main wraps and main's call of it."""
    from cwm.tokenizer.tracetext import ENTRY
    from cwm.trace.format import OK

    if row["status"] != OK or row["return_value"] is None:
        return None
    code, call = row["source"], row["call"]
    head, sep, tail = code.rpartition(f"\n\ndef {ENTRY}():\n    return ")
    if call == f"{ENTRY}()" and sep:
        code, call = head, tail.strip()
    return code.rstrip(), call, row["return_value"]


def io_prompt(code: str, call: str) -> str:
    """The problem of CruxEval's direct prompt (evalsets.direct_prompt, without its instruction and
    two solved examples) asking for `call`, whatever the function's name:
    `[PYTHON]\\n<code>\\nassert <call> == ??\\n[/PYTHON]\\n[ANSWER]\\n`."""
    from cwm.data.evalsets import direct_prompt

    header = direct_prompt("\1", "\0").split("\1")[0].rpartition("[PYTHON]\n")[0]
    problem = direct_prompt(code, "\0")[len(header):]
    head, sep, tail = problem.rpartition("assert f(\0) == ??")
    return f"{head}assert {call} == ??{tail}"


def io_document(code: str, call: str, output: str, tok) -> tuple[list[int], list[int]]:
    """<|begin_of_text|> io_prompt (not learned), then `assert call == output\\n[/ANSWER]` and
    <|end_of_text|> (learned): encoded in two parts, as an evaluation encodes the prompt alone."""
    from cwm.data.evalsets import DIRECT_STOP

    prompt = tok.encode(io_prompt(code, call))
    answer = tok.encode(f"assert {call} == {output}\n{DIRECT_STOP}")
    return [tok.bos_id, *prompt, *answer, tok.eos_id], [0] * (len(prompt) + 1) + [1] * (len(answer) + 1)


def documents(source: PackInput, tok, loss: str, seed: int) -> Iterator[tuple[list[int], list[int]]]:
    """(ids, loss_mask) per document, in a seeded shuffled order."""
    # An io input takes the order of a trace input named after the directory (the same programs first).
    rng = random.Random(f"cwm-pack:{seed}:{source.path.name if source.io else source.name}")
    kind = source.kind
    if kind == "chat":
        from cwm.tokenizer.prompts import chat_ids

        lines = _chat_lines(source.path)
        rng.shuffle(lines)
        for number, line in lines:
            try:
                yield chat_ids(tok, json.loads(line)["messages"], add_generation_prompt=False)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise PackError(f"{source.path}:{number}: not a JSON object with 'messages' ({type(e).__name__}: {e})") from None
        return
    shards = sorted(read_manifest(source.path)["shards"])
    rng.shuffle(shards)
    for name in shards:  # one shard in memory at a time; shuffled across and within shards
        rows = read_shard(source.path / name).to_pylist()
        rng.shuffle(rows)
        for row in rows:
            if kind == "code":
                text_ids = tok.encode(row["text"])
                yield [tok.bos_id, *text_ids, tok.eos_id], [0] + [1] * (len(text_ids) + 1)
            elif kind == "io":
                pair = io_pair(row)
                if pair is not None:
                    yield io_document(*pair, tok)
            elif row["cwm_text"] is not None:  # complete traces only: not one stopped by a limit
                yield trace_document(row_to_trace(row), tok, loss)


def _chat_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of each non-blank line of a chat JSONL file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise PackError(f"{path}: not UTF-8 text ({e}); a chat .jsonl file must be UTF-8") from None
    return [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def document_count(source: PackInput) -> int:
    """How many documents `documents` yields for the input (for progress; cheap: no text is read
    but a chat file's lines and a trace dataset's status column)."""
    kind = source.kind
    if kind == "chat":
        return len(_chat_lines(source.path))
    shards = read_manifest(source.path)["shards"]
    if kind == "code":
        return sum(entry["rows"] for entry in shards.values())
    from cwm.trace.format import COMPLETE, OK

    wanted = (OK,) if kind == "io" else COMPLETE
    statuses = (read_shard(source.path / name, columns=["status"])["status"].to_pylist() for name in shards)
    return sum(status in wanted for column in statuses for status in column)


# ---------------------------------------------------------------------------------------------
# Packing


def pack(
    inputs: list[PackInput],
    tok,
    out: str | os.PathLike,
    seq_len: int = 2048,
    seed: int = 0,
    max_tokens: int | None = None,
    loss: str = "frames",
    whole_docs: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Pack the inputs into `out` (a cwm-packed-v1 directory); returns its meta.

    progress(tokens so far, estimated tokens in all) is called every 16 documents. Packing ends
    when the first input runs out (or at max_tokens), so the estimate follows the input nearest
    its end: tokens so far / the largest fraction of an input's documents taken."""
    if not inputs:
        raise PackError("give at least one --input")
    if loss not in LOSS_MODES:
        raise PackError(f"--trace-loss must be one of {', '.join(LOSS_MODES)}, not {loss!r}")
    if seq_len < 2:
        raise PackError("--seq-len must be at least 2")
    if len({i.name for i in inputs}) != len(inputs):
        raise PackError("two --input share a name; name them: --input NAME=PATH:WEIGHT")
    streams = [documents(i, tok, loss, seed) for i in inputs]
    weights = [i.weight / sum(i.weight for i in inputs) for i in inputs]
    taken = [0] * len(inputs)
    docs = [0] * len(inputs)
    rows = _Rows(seq_len, tok.pad_id, whole_docs)
    meta = {"inputs": [{"name": i.name, "path": str(i.path), "weight": i.weight, **({"io": True} if i.io else {})} for i in inputs], "seed": seed,
            "trace_loss": loss, "whole_docs": whole_docs}
    sizes = [max(1, document_count(i)) for i in inputs] if progress else []
    with PackedWriter(out, seq_len, tok.vocab_size, **meta) as writer:
        while max_tokens is None or sum(taken) < max_tokens:
            # The input furthest below its share of the tokens so far goes next.
            k = min(range(len(inputs)), key=lambda j: (taken[j] / weights[j], j))
            doc = next(streams[k], None)
            if doc is None:
                break
            ids, mask = doc
            taken[k] += len(ids)
            docs[k] += 1
            for row in rows.add(ids, mask):
                writer.add(*row)
            if progress and sum(docs) % 16 == 0:
                total = sum(taken) / max(d / n for d, n in zip(docs, sizes))
                progress(sum(taken), int(total if max_tokens is None else min(total, max_tokens)))
        for row in rows.flush():
            writer.add(*row)
        if progress:
            progress(sum(taken), sum(taken))
        tok.save(writer.tmp)  # the dataset carries its tokenizer; training copies it into checkpoints
        writer.extra_meta.update(tokens={i.name: t for i, t in zip(inputs, taken)}, documents={i.name: d for i, d in zip(inputs, docs)},
                                 dropped_longer_than_a_row=rows.dropped)
    return json.loads((Path(out) / "meta.json").read_text())


class _Rows:
    """Fills rows of seq_len tokens; yields (tokens, doc_ids, loss_mask) per full row.

    whole: a document is never split across rows (a trace cut from its source context teaches
    frames the model cannot read off the code): one that does not fit the row's room starts the
    next row (the room is padded), and one longer than a row is dropped (counted in `dropped`).
    """

    def __init__(self, seq_len: int, pad_id: int, whole: bool = False):
        self.seq_len, self.pad_id, self.whole = seq_len, pad_id, whole
        self.tokens, self.doc_ids, self.mask = [], [], []
        self.doc = 0  # the id of the next document in this row
        self.dropped = 0

    def add(self, ids: list[int], mask: list[int]):
        if self.whole:
            if len(ids) > self.seq_len:
                self.dropped += 1
                return
            if len(ids) > self.seq_len - len(self.tokens):
                yield from self.flush()
                self.tokens, self.doc_ids, self.mask, self.doc = [], [], [], 0
        while ids:
            room = self.seq_len - len(self.tokens)
            self.tokens += ids[:room]
            self.mask += mask[:room]
            self.doc_ids += [self.doc] * len(ids[:room])
            ids, mask = ids[room:], mask[room:]
            self.doc += 1
            if len(self.tokens) == self.seq_len:
                yield self.tokens, self.doc_ids, self.mask
                self.tokens, self.doc_ids, self.mask, self.doc = [], [], [], 0

    def flush(self):
        if self.tokens:
            pad = self.seq_len - len(self.tokens)
            yield self.tokens + [self.pad_id] * pad, self.doc_ids + [self.doc] * pad, self.mask + [0] * pad
