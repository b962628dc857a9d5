"""Tokenizing and packing: mixture shares, document boundaries, loss masks, the packed format."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from cwm.data.build import BuildParams, build
from cwm.data.pack import PackError, PackInput, pack
from cwm.data.packed import PackedDataset
from cwm.data.synth import generate
from cwm.tokenizer import load_tokenizer, train_bpe

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    texts = [(STDLIB / name).read_text() for name in ("textwrap.py", "json/encoder.py", "heapq.py")]
    train_bpe(iter(texts), vocab_size=400, out_dir=out)
    return load_tokenizer(out)


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory):
    """A code corpus of small real files: the generator's programs written out as modules."""
    files = tmp_path_factory.mktemp("files")
    for i, program in enumerate(generate(seed=7, n=60)):
        (files / f"m{i:02d}.py").write_text(program.source)
    out = tmp_path_factory.mktemp("code")
    build(out, BuildParams(source=f"code:{files}", shard_size=16), progress=False)
    return out


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}]}
        for i in range(400)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_code_corpus_is_a_dataset_of_source_files(code_dir):
    import pyarrow.parquet as pq

    manifest = json.loads((code_dir / "manifest.json").read_text())
    assert manifest["kind"] == "code" and manifest["complete"]
    rows = [r for name in sorted(manifest["shards"]) for r in pq.read_table(code_dir / name).to_pylist()]
    sources = [p.source for p in generate(seed=7, n=60)]
    assert [r["path"] for r in rows] == [f"m{i:02d}.py" for i in range(60)]
    assert [r["text"] for r in rows] == sources


def test_chat_loss_is_on_assistant_turns_only(tok, chat_file, tmp_path):
    meta = pack([PackInput("chat", chat_file)], tok, tmp_path / "p", seq_len=64)
    data = PackedDataset(tmp_path / "p")
    assert len(data) == meta["num_sequences"] > 3
    eot = tok.eot_id
    for i in range(len(data)):
        row = data[i]
        learned = tok.decode(row["tokens"][row["loss_mask"] == 1].tolist())
        assert "user" not in learned and "What is" not in learned
    first = data[0]
    text = tok.decode(first["tokens"][first["loss_mask"] == 1].tolist())
    assert text.startswith("It is ") and text.count("<|eot_id|>") >= 1
    assert eot in first["tokens"]


def test_documents_are_packed_whole_with_boundaries(tok, code_dir, tmp_path):
    pack([PackInput("code", code_dir)], tok, tmp_path / "p", seq_len=128, seed=1)
    data = PackedDataset(tmp_path / "p")
    tokens = np.concatenate([data[i]["tokens"] for i in range(len(data))])
    doc_ids = np.stack([data[i]["doc_ids"] for i in range(len(data))])
    # every document starts with BOS and ends with EOS, and the concatenation decodes to the files
    text = tok.decode(tokens.tolist(), keep_specials=True)
    for content in [p.source for p in generate(seed=7, n=60)]:
        assert f"<|begin_of_text|>{content}<|end_of_text|>" in text
    # doc ids count up from 0 in each row and change exactly at a BOS inside a row
    for r in range(len(data)):
        row, ids = data[r]["tokens"], doc_ids[r]
        assert ids[0] == 0 and np.all(np.diff(ids) >= 0)
        starts = np.flatnonzero(np.diff(ids)) + 1
        assert all(row[s] in (tok.bos_id, tok.pad_id) for s in starts)
    # the last row is padded: pad tokens are not learned
    last = data[len(data) - 1]
    assert np.all(last["loss_mask"][last["tokens"] == tok.pad_id] == 0)


def test_mixture_weights_set_the_token_shares(tok, code_dir, chat_file, tmp_path):
    longest = max(len(tok.encode(p.source)) + 2 for p in generate(seed=7, n=60))  # a code document, BOS and EOS
    for weights in ((0.7, 0.3), (0.2, 0.8)):
        meta = pack(
            [PackInput("code", code_dir, weights[0]), PackInput("chat", chat_file, weights[1])],
            tok, tmp_path / "p", seq_len=256, max_tokens=4000,
        )  # fmt: skip
        total = sum(meta["tokens"].values())
        assert 4000 <= total < 4000 + longest
        # each input's share of the tokens is its weight, up to one document
        assert abs(meta["tokens"]["code"] - weights[0] * total) <= longest
        assert meta["documents"]["chat"] > 0 and meta["documents"]["code"] > 0
    assert PackedDataset(tmp_path / "p").meta["inputs"][1]["weight"] == 0.8
    # without a token budget, packing stops when the first input runs out, so the shares still hold
    meta = pack([PackInput("code", code_dir, 0.5), PackInput("chat", chat_file, 0.5)], tok, tmp_path / "q", seq_len=256)
    assert meta["documents"]["code"] < 60 and meta["documents"]["chat"] == 400
    assert abs(meta["tokens"]["code"] - 0.5 * sum(meta["tokens"].values())) <= longest


def test_input_specs_parse_and_bad_ones_are_refused(tmp_path, code_dir):
    assert PackInput.parse(f"traces={code_dir}:0.7") == PackInput("traces", code_dir, 0.7)
    assert PackInput.parse(str(code_dir)) == PackInput(code_dir.name, code_dir, 1.0)
    with pytest.raises(PackError, match="weight must be positive"):
        PackInput.parse(f"a={code_dir}:0")
    with pytest.raises(PackError, match="not a dataset built by"):
        _ = PackInput("x", tmp_path).kind


def test_cli_pack(tok, code_dir, chat_file, tmp_path):
    tok.save(tmp_path / "tok")
    cmd = [sys.executable, "-m", "cwm", "data", "pack", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "p"),
           "--seq-len", "64", "--input", f"code={code_dir}:0.5", "--input", f"chat={chat_file}:0.5"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "packed" in run.stdout and len(PackedDataset(tmp_path / "p")) > 0
    bad = subprocess.run(cmd[:-4] + ["--input", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a dataset built by" in bad.stderr and "Traceback" not in bad.stderr


def test_trace_documents_come_from_the_pieces_and_learn_the_frames(tok, tmp_path):
    from cwm.data.dataset import row_to_trace
    from cwm.data.pack import trace_document
    from cwm.trace.format import to_cwm_pieces

    out = tmp_path / "traces"
    build(out, BuildParams(source="synth", n=6, seed=2, shard_size=3, max_events=2000, timeout=5.0, decontaminate=()), progress=False)
    import pyarrow.parquet as pq

    rows = [r for name in sorted(json.loads((out / "manifest.json").read_text())["shards"]) for r in pq.read_table(out / name).to_pylist()]
    for row in rows:
        trace = row_to_trace(row)
        ids, mask = trace_document(trace, tok)
        assert ids == tok.encode_pieces(to_cwm_pieces(trace))  # the pieces, not a split of the text
        assert tok.decode(ids) == row["cwm_text"]
        mask = np.array(mask)
        context = tok.decode(np.array(ids)[mask == 0].tolist())
        assert context.startswith("<|begin_of_text|><|trace_context_start|>") and context.endswith("<|frame_sep|>")
        assert context.count("<|frame_sep|>") == 1 and np.all(np.diff(mask) >= 0)  # the context, then only frames
        assert context + tok.decode(np.array(ids)[mask == 1].tolist()) == row["cwm_text"]
        assert trace_document(trace, tok, loss="all")[1] == [1] * len(ids)
    pack([PackInput("traces", out)], tok, tmp_path / "p", seq_len=512)
    data = PackedDataset(tmp_path / "p")
    text = tok.decode(np.concatenate([data[i]["tokens"] for i in range(len(data))]).tolist())
    assert all(row["cwm_text"] in text for row in rows)


def test_whole_docs_are_never_split_and_longer_ones_are_dropped(tok, code_dir, tmp_path):
    meta = pack([PackInput("code", code_dir)], tok, tmp_path / "p", seq_len=1024, seed=1, whole_docs=True)
    data = PackedDataset(tmp_path / "p")
    kept = 0
    for r in range(len(data)):
        row, ids = data[r]["tokens"], data[r]["doc_ids"]
        for d in np.unique(ids):
            doc = row[ids == d]
            if doc[0] == tok.pad_id:  # the padded room at the end of a row
                assert np.all(doc == tok.pad_id) and np.all(data[r]["loss_mask"][ids == d] == 0)
                continue
            assert doc[0] == tok.bos_id and doc[-1] == tok.eos_id  # whole: starts and ends in this row
            kept += 1
    lengths = [len(tok.encode(p.source)) + 2 for p in generate(seed=7, n=60)]
    assert meta["dropped_longer_than_a_row"] == sum(n > 1024 for n in lengths) > 0
    assert kept == sum(n <= 1024 for n in lengths)


def _stderr_in_a_terminal(args) -> tuple[int, str]:
    """Run a command with its stderr on a pseudo-terminal (as a person sees it); its return code and stderr."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env={**os.environ, "COLUMNS": "200"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: the command has ended and closed it
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_pack_and_tokenizer_train_show_progress_with_rate_and_eta_unless_quiet(tok, code_dir, chat_file, tmp_path):
    tok.save(tmp_path / "tok")
    pack_cmd = [sys.executable, "-m", "cwm", "data", "pack", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "packed"),
                "--seq-len", "64", "--input", f"code={code_dir}:0.5", "--input", f"chat={chat_file}:0.5"]
    code, err = _stderr_in_a_terminal(pack_cmd)
    assert code == 0, err
    assert "packing" in err and "tokens/s" in err and "ETA" in err, err
    code, err = _stderr_in_a_terminal([*pack_cmd, "--quiet"])
    assert code == 0 and err.strip() == "", err

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("textwrap.py", "heapq.py", "json/encoder.py", "difflib.py"):
        (corpus / name.replace("/", "_")).write_text((STDLIB / name).read_text())
    train_cmd = [sys.executable, "-m", "cwm", "tokenizer", "train", "--corpus", str(corpus), "--vocab-size", "400", "--out", str(tmp_path / "t")]
    code, err = _stderr_in_a_terminal(train_cmd)
    assert code == 0, err
    assert "reading and counting" in err and "4/4" in err and "files/s" in err and "ETA" in err and "computing the merges" in err, err
    assert "wrote" in err
    code, err = _stderr_in_a_terminal([*train_cmd, "--quiet"])
    assert code == 0 and "reading and counting" not in err and "computing the merges" not in err, err
