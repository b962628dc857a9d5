"""cwm.tokenizer: the special-token table, loading both official formats, the small BPE, the CLI.

The real Llama-3/CWM tokenizer files are not available offline. The "official" tokenizers here
are faithful stand-ins: a small BPE trained on real code, written out in each official format
(tiktoken `tokenizer.model`; Hugging Face `tokenizer.json` with added tokens) and padded with
unreachable filler tokens to the release's 128000 ordinary ranks, so the specials land on the
release's exact ids (128000 + k) by the same rule that places them for the real files.
"""

from __future__ import annotations

import base64
import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cwm.cli import main as cwm_main
from cwm.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerError, load_tokenizer, release_id, train_bpe
from cwm.tokenizer.specials import NAMED_OFFSETS, SPECIAL_STRINGS

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS = [STDLIB / "json", STDLIB / "textwrap.py"]  # ~90 kB of real code: trains in well under a second
SMALL_N = 600
RELEASE_N = 128000

# The release's named special tokens and ids (CWM_SPEC.md §4; cwm/text/tokenizers.py).
RELEASE_IDS = {
    "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|pad|>": 128004,
    "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008,
    "<|eot_id|>": 128009, "<|frame_sep|>": 128100, "<|action_sep|>": 128101,
    "<|return_sep|>": 128102, "<|call_sep|>": 128103, "<|line_sep|>": 128104,
    "<|exception_sep|>": 128105, "<|arg_sep|>": 128106, "<|trace_context_start|>": 128107,
    "<|reasoning_thinking_start|>": 128120, "<|reasoning_thinking_end|>": 128121,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE vocabularies are written in."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in chars:
            chars[b], n = chr(256 + n), n + 1
    return chars


def _fillers(count: int) -> list[bytes]:
    # b"\0\0" + 3 bytes: no proper piece of these is a token, so BPE never produces them.
    return [b"\0\0" + i.to_bytes(3, "big") for i in range(count)]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Tokenizer:
    return train_bpe(CORPUS, vocab_size=SMALL_N, out_dir=tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def small_vocab(small) -> dict[str, int]:
    return small._backend.data["model"]["vocab"]


@pytest.fixture(scope="module")
def official_tiktoken(small_vocab, tmp_path_factory) -> Tokenizer:
    """Stand-in for the release's tokenizer.model: base64 token and rank per line, 128000 ranks."""
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in small_vocab.items()}
    ranks.update({t: len(ranks) + i for i, t in enumerate(_fillers(RELEASE_N - len(ranks)))})
    path = tmp_path_factory.mktemp("tiktoken") / "tokenizer.model"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    return load_tokenizer(path.parent)


@pytest.fixture(scope="module")
def official_hf(small, small_vocab, tmp_path_factory) -> Tokenizer:
    """Stand-in for the release's Hugging Face tokenizer.json: 128000 ordinary tokens, then the
    256 specials as added tokens with ids 128000 + k."""
    data = json.loads(json.dumps(small._backend.data))
    to_char = _bytes_to_unicode()
    vocab = data["model"]["vocab"]
    for t in _fillers(RELEASE_N - len(vocab)):
        vocab["".join(to_char[b] for b in t)] = len(vocab)
    for added in data["added_tokens"]:
        added["id"] = RELEASE_N + SPECIAL_TOKENS[added["content"]]
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    path.write_text(json.dumps(data))
    return load_tokenizer(path.parent)


@pytest.fixture(scope="module", params=["small", "official_tiktoken", "official_hf"])
def tok(request) -> Tokenizer:
    return request.getfixturevalue(request.param)


# ---- the table -------------------------------------------------------------------------------


def test_special_table_has_the_release_ids():
    assert len(SPECIAL_TOKENS) == len(SPECIAL_STRINGS) == 256
    assert sorted(SPECIAL_TOKENS.values()) == list(range(256))
    assert {s: release_id(s) for s in NAMED_OFFSETS} == RELEASE_IDS


def test_reserved_tokens_are_numbered_by_their_offset():
    # CWM's convention (cwm/text/tokenizers.py), not Llama-3's: 128002 is reserved_2, not reserved_0.
    assert release_id("<|reserved_special_token_2|>") == 128002
    assert release_id("<|reserved_special_token_5|>") == 128005
    assert release_id("<|reserved_special_token_10|>") == 128010
    assert release_id("<|reserved_special_token_255|>") == 128255
    for named_offset in (0, 1, 4, 9, 100, 121):
        assert f"<|reserved_special_token_{named_offset}|>" not in SPECIAL_TOKENS
    assert SPECIAL_STRINGS[3] == "<|reserved_special_token_3|>"


# ---- loading and ids -------------------------------------------------------------------------


def test_official_stand_ins_put_specials_at_the_release_ids(official_tiktoken, official_hf):
    for t in (official_tiktoken, official_hf):
        assert t.num_ordinary == RELEASE_N and t.vocab_size == 128256
        assert {s: t.special_id(s) for s in RELEASE_IDS} == RELEASE_IDS
        assert (t.bos_id, t.eos_id, t.eot_id, t.eom_id, t.pad_id) == (128000, 128001, 128009, 128008, 128004)
        assert (t.frame_sep_id, t.trace_context_start_id, t.thinking_end_id) == (128100, 128107, 128121)
        assert sorted(t.stop_ids) == [128001, 128008, 128009]
        assert t.special_id("<|reserved_special_token_200|>") == 128200


def test_small_layout_puts_specials_after_the_ordinary_tokens(small):
    assert small.num_ordinary == SMALL_N and small.vocab_size == SMALL_N + 256
    for s, k in SPECIAL_TOKENS.items():
        assert small.special_id(s) == SMALL_N + k
    assert (small.bos_id, small.eos_id, small.eot_id, small.frame_sep_id) == (600, 601, 609, 700)
    assert small.decode(range(SMALL_N, SMALL_N + 256)) == "".join(SPECIAL_STRINGS)


def test_default_small_vocab_is_4352(tmp_path):
    # The small model presets rely on it; the stdlib json package is too small for 4096 merges,
    # so this trains on a bigger slice of the standard library.
    tok = train_bpe([STDLIB / "email", STDLIB / "json", STDLIB / "asyncio"])
    assert (tok.num_ordinary, tok.vocab_size, tok.bos_id) == (4096, 4352, 4096)


def test_special_strings_in_text_stay_text(tok):
    text = "print('<|frame_sep|>')  # <|begin_of_text|><|eot_id|>" + "".join(SPECIAL_STRINGS)
    ids = tok.encode(text)
    assert all(i < tok.num_ordinary for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_decode_encode_round_trips_any_unicode(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.num_ordinary for i in ids)
    assert tok.decode(ids) == text


def test_encode_tokenizes_code_into_multi_byte_tokens(tok):
    text = (STDLIB / "json" / "decoder.py").read_text()
    assert len(tok.encode(text)) < len(text.encode()) / 2  # trained merges are used, not bytes


def test_encode_pieces_looks_up_specials_and_encodes_each_text(tok):
    pieces = [("<|begin_of_text|>", True), ("def f(x):\n", False), ("<|frame_sep|>", True),
              ("x = 1", False), ("", False), ("<|end_of_text|>", True)]
    ids = tok.encode_pieces(pieces)
    a, b = tok.encode("def f(x):\n"), tok.encode("x = 1")
    assert ids == [tok.bos_id, *a, tok.frame_sep_id, *b, tok.eos_id]
    assert tok.decode(ids) == "".join(text for text, _ in pieces)
    assert tok.encode_pieces([("<|frame_sep|>", False)]) == tok.encode("<|frame_sep|>")
    with pytest.raises(TokenizerError, match="not a CWM special token"):
        tok.encode_pieces([("<|nope|>", True)])


def test_decode_can_drop_specials_and_rejects_ids_outside_the_vocab(tok):
    ids = [tok.bos_id, *tok.encode("a = 1"), tok.eot_id]
    assert tok.decode(ids, keep_specials=False) == "a = 1"
    assert tok.decode(ids) == "<|begin_of_text|>a = 1<|eot_id|>"
    assert tok.decode(np.array(ids)) == tok.decode(tuple(ids)) == "<|begin_of_text|>a = 1<|eot_id|>"
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([-1])


def test_save_and_load_give_the_same_tokenizer(tok, tmp_path):
    text = (STDLIB / "textwrap.py").read_text()[:3000]
    again = load_tokenizer(tok.save(tmp_path / "ckpt"))
    assert type(again._backend) is type(tok._backend)
    assert (again.num_ordinary, again.vocab_size) == (tok.num_ordinary, tok.vocab_size)
    assert again.encode(text) == tok.encode(text)


def test_small_tokenizer_loads_in_transformers(small, tmp_path):
    from transformers import AutoTokenizer

    small.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = (STDLIB / "json" / "tool.py").read_text()
    assert hf(text, add_special_tokens=False)["input_ids"] == small.encode(text)
    assert hf.convert_tokens_to_ids("<|frame_sep|>") == small.frame_sep_id
    assert (hf.bos_token_id, hf.eos_token_id, len(hf)) == (small.bos_id, small.eos_id, small.vocab_size)
    assert hf.decode(small.encode(text)) == text


# ---- training --------------------------------------------------------------------------------


def test_train_from_an_iterator_of_texts():
    texts = (f.read_text() for f in sorted((STDLIB / "json").glob("*.py")))
    tok = train_bpe(texts, vocab_size=400)
    assert tok.vocab_size == 656 and tok.decode(tok.encode("import json\n")) == "import json\n"


def test_training_is_repeatable(small):
    again = train_bpe(CORPUS, vocab_size=SMALL_N)
    assert again._backend.data["model"] == small._backend.data["model"]


def test_training_errors_are_clear(tmp_path):
    with pytest.raises(TokenizerError, match="fewer than the 100000 asked for"):
        train_bpe([STDLIB / "json" / "tool.py"], vocab_size=100000)
    with pytest.raises(TokenizerError, match="too small"):
        train_bpe(CORPUS, vocab_size=100)
    with pytest.raises(TokenizerError, match="does not exist"):
        train_bpe([tmp_path / "missing"])
    with pytest.raises(TokenizerError, match="no corpus files"):
        train_bpe([tmp_path])


# ---- bad files -------------------------------------------------------------------------------


def test_loading_errors_name_the_file_and_the_fix(tmp_path, small):
    with pytest.raises(TokenizerError, match="no tokenizer.json or tokenizer.model"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="no such tokenizer"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(tmp_path)
    # A plain BPE without the CWM specials: the ids would be wrong, so it is refused.
    plain = json.loads(json.dumps(small._backend.data))
    plain["added_tokens"] = []
    (tmp_path / "tokenizer.json").write_text(json.dumps(plain))
    with pytest.raises(TokenizerError, match=r"<\|begin_of_text\|> has id None, expected 600"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nnot-a-line\n")
    with pytest.raises(TokenizerError, match="tokenizer.model:2: expected 'BASE64_TOKEN RANK'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 5\n")
    with pytest.raises(TokenizerError, match="ranks must be 0..1"):
        load_tokenizer(tmp_path)


# ---- CLI -------------------------------------------------------------------------------------


def test_cli_trains_and_encodes(tmp_path, capsys):
    out = tmp_path / "tok"
    assert cwm_main(["tokenizer", "train", "--corpus", str(STDLIB / "json"), "--vocab-size", "400", "--out", str(out)]) == 0
    tok = load_tokenizer(out)
    assert (tok.num_ordinary, tok.vocab_size) == (400, 656)
    assert "vocab 656" in capsys.readouterr().err
    assert cwm_main(["tokenizer", "encode", "--tokenizer", str(out), "x = '<|eot_id|>'"]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == tok.encode("x = '<|eot_id|>'")


def test_cli_reports_user_errors_without_a_traceback(tmp_path, capsys):
    assert cwm_main(["tokenizer", "encode", "--tokenizer", str(tmp_path), "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cwm tokenizer: error: ") and "cwm tokenizer train" in err and "Traceback" not in err
    assert cwm_main(["tokenizer", "train", "--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
