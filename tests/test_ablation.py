"""The trace ablation (docs/ablation.md): io documents, its configs, its direct-mode evaluation."""

from pathlib import Path

import pytest

from conftest import make_tiny_checkpoint
from cwm.data.build import BuildParams, build
from cwm.data.dataset import rows as dataset_rows
from cwm.data.pack import PackInput, io_document, io_pair, io_prompt, pack
from cwm.data.packed import PackedDataset
from cwm.eval.cruxeval import direct_prompt

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """A real trace dataset of the `real` source: half its programs entered through main()."""
    out = tmp_path_factory.mktemp("real")
    build(out, BuildParams(source="real:size=1", n=24, seed=5, shard_size=8), progress=False)
    return out


def rows_of(dataset):
    return list(dataset_rows(dataset))


def test_io_pair_unwraps_main_and_keeps_direct_calls(traces):
    rows = rows_of(traces)
    wrapped = [r for r in rows if r["call"] == "main()"]
    direct = [r for r in rows if r["call"] != "main()"]
    assert wrapped and direct
    for row in wrapped:
        code, call, output = io_pair(row)
        assert "def main" not in code and f"    return {call}\n" in row["source"] and output == row["return_value"]
    for row in direct:
        assert io_pair(row) == (row["source"].rstrip(), row["call"], row["return_value"])
    assert io_pair({**rows[0], "status": "raised", "return_value": None}) is None


def test_io_prompt_is_the_direct_prompt_for_any_function_name():
    code = "def f(x):\n    return x + 1"
    assert direct_prompt(code, "3").endswith("\n\n" + io_prompt(code, "f(3)"))
    assert io_prompt(code, "f(3)").startswith("[PYTHON]\ndef f(x):")
    assert io_prompt("def grow(x):\n    return x", "grow([1])").endswith(
        "[PYTHON]\ndef grow(x):\n    return x\nassert grow([1]) == ??\n[/PYTHON]\n[ANSWER]\n")


def test_io_document_learns_the_answer_only(tok):
    ids, mask = io_document("def grow(x):\n    return x * 2", "grow(3)", "6", tok)
    assert len(ids) == len(mask) and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    prompt = io_prompt("def grow(x):\n    return x * 2", "grow(3)")
    assert tok.decode(ids[1:]) == prompt + "assert grow(3) == 6\n[/ANSWER]<|end_of_text|>"
    learned = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(learned) == "assert grow(3) == 6\n[/ANSWER]<|end_of_text|>"
    assert mask == [0] * (len(ids) - len(learned)) + [1] * len(learned)  # one learned span, at the end
    forced = tok.encode("assert grow(3) ==")  # what cwm.eval.direct.predict appends to the prompt
    assert learned[:len(forced)] == forced


def test_pack_io_beside_traces_walks_the_same_programs(traces, tok, tmp_path):
    from cwm.data.dataset import row_to_trace
    from cwm.data.pack import documents, trace_document

    io, plain = PackInput.parse(f"io:io={traces}:2"), PackInput.parse(str(traces))
    assert io == PackInput("io", traces, 2.0, io=True) and io.kind == "io" and plain.kind == "traces"
    rows = rows_of(traces)
    by_trace = {tuple(trace_document(row_to_trace(r), tok)[0]): r for r in rows if r["cwm_text"] is not None}
    trace_order = [by_trace[tuple(ids)] for ids, _ in documents(plain, tok, "frames", seed=3)]
    # io documents of every returning program, shuffled as the traces are (by the directory's name)
    assert list(documents(io, tok, "frames", seed=3)) == [io_document(*io_pair(r), tok) for r in trace_order if io_pair(r)]
    meta = pack([io, plain], tok, tmp_path / "p", seq_len=4096)
    assert meta["inputs"][0]["io"] is True and meta["documents"]["io"] == sum(io_pair(r) is not None for r in rows)
    ds = PackedDataset(tmp_path / "p")
    text = "".join(tok.decode(ds[i]["tokens"].tolist()) for i in range(len(ds)))
    assert all(f"assert {io_pair(r)[1]} == ??" in text for r in rows if io_pair(r))


def test_pack_io_of_a_code_corpus_is_one_line_error(tmp_path, tok):
    from cwm.data.pack import PackError

    (tmp_path / "m.py").write_text("x = 1\n")
    build(tmp_path / "code", BuildParams(source=f"code:{tmp_path}"), progress=False)
    with pytest.raises(PackError, match="io pairs come from a trace dataset"):
        pack([PackInput.parse(f"io:{tmp_path / 'code'}")], tok, tmp_path / "p")


@pytest.mark.parametrize("config", ["configs/ablation-io.toml", "configs/ablation-traces.toml"])
def test_ablation_configs_dry_run(config, capsys, monkeypatch):
    from cwm.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["train", "--config", config, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1,901,696" in out and "100" in out and "4,096 tokens" in out


def test_the_two_configs_differ_only_in_data_and_out_dir():
    from cwm.train.config import load_config

    a, b = (load_config(ROOT / f"configs/ablation-{n}.toml") for n in ("io", "traces"))
    assert a.data.train != b.data.train and a.train.out_dir != b.train.out_dir
    b.data.train, b.train.out_dir = a.data.train, a.train.out_dir
    assert a == b


def test_direct_accuracy_on_a_tiny_real_model(traces, tok, tmp_path):
    from cwm.backends import LocalBackend
    from cwm.eval.direct import direct_accuracy, heldout_items, is_correct

    items = heldout_items(traces, limit=5)
    assert len(items) == 5 and [i["call"] for i in items] == [io_pair(r)[1] for r in rows_of(traces) if io_pair(r)][:5]
    backend = LocalBackend.from_dir(make_tiny_checkpoint(tmp_path / "ckpt", tok))
    result = direct_accuracy(backend, items[:2])
    assert result["problems"] == 2 and len(result["answers"]) == 2 and result["accuracy"] in (0.0, 0.5, 1.0)
    assert all(isinstance(a["answer"], str) for a in result["answers"])
    gold = direct_accuracy(None, items, answers=[i["output"] for i in items])
    assert gold["accuracy"] == 1.0  # the real outputs pass CruxEval's check in the sandbox
    item = items[0]
    assert not is_correct(item, item["call"])  # a copy of the call is wrong
    assert not is_correct(item, "") and not is_correct(item, "1 +")
