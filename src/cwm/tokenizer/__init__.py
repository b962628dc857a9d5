"""Tokens for CWM: the special-token table, the official vocabulary, a small BPE, prompt builders."""

from cwm.tokenizer.bpe import train_bpe
from cwm.tokenizer.specials import SPECIAL_TOKENS, release_id
from cwm.tokenizer.tokenizer import Tokenizer, TokenizerError, copy_tokenizer_files, load_tokenizer

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "TokenizerError", "copy_tokenizer_files", "load_tokenizer", "release_id", "train_bpe"]
