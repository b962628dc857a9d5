"""Shared fixtures: a small real tokenizer and a real (untrained) tiny checkpoint built from it."""

import difflib
from pathlib import Path

import pytest

CORPUS = Path(difflib.__file__).read_text()  # any Python text will do for a tiny BPE


@pytest.fixture(scope="session")
def tok():
    from cwm.tokenizer import train_bpe

    return train_bpe(iter([CORPUS]), vocab_size=512)


def make_tiny_checkpoint(path, tok, max_seq_len=2048):
    """A randomly initialised cwm-tiny model plus `tok`, saved as a complete checkpoint dir."""
    from cwm.model import Transformer, get_preset, save_pretrained

    tok.save(path)
    cfg = get_preset("cwm-tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len,
                     bos_token_id=tok.bos_id, eos_token_ids=tuple(tok.stop_ids))
    model = Transformer(cfg)
    model.init_weights(seed=0)
    save_pretrained(model, path)
    return path
