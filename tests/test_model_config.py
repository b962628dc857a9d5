"""Presets, sizes and `cwm model info`."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from cwm.model import ModelConfig, Transformer, get_preset
from cwm.model.config import FULL, SLIDING


def test_32b_preset_is_the_release():
    cfg = get_preset("cwm-32b")
    assert cfg.num_params() == 32_581_097_472  # 32.58B
    types = cfg.attention_types()
    assert [i for i, t in enumerate(types) if t == FULL] == list(range(0, 64, 4)) + [63]  # Meta: 17 global
    hf_rule = get_preset("cwm-32b", global_rule="hf").attention_types()
    assert [i for i, t in enumerate(hf_rule) if t == FULL] == list(range(0, 64, 4))  # transformers: 16
    hf = cfg.to_hf_dict()
    assert hf["rope_parameters"] == {
        "rope_type": "llama3", "rope_theta": 1e6, "factor": 16.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    }
    assert (hf["sliding_window"], hf["max_position_embeddings"], hf["eos_token_id"]) == (8192, 131072, [128001, 128008, 128009])
    assert ModelConfig.from_hf_dict(hf) == dataclasses.replace(cfg, global_rule="hf", layer_types=types)


@pytest.mark.parametrize("name", ["cwm-tiny", "cwm-small"])
def test_small_presets_keep_the_structure(name):
    cfg = get_preset(name)
    with torch.device("meta"):
        assert sum(p.numel() for p in Transformer(cfg).parameters()) == cfg.num_params()
    assert cfg.n_heads > cfg.n_kv_heads and cfg.vocab_size == 4352
    assert SLIDING in cfg.attention_types() and cfg.attention_types()[-1] == FULL
    assert cfg.sliding_window < cfg.max_seq_len
    assert 0.5e6 < cfg.num_params() < 1.5e6 if name == "cwm-tiny" else 2e6 < cfg.num_params() < 10e6


def test_flops_per_token():
    cfg = get_preset("cwm-tiny")
    n = cfg.num_params() - cfg.vocab_size * cfg.dim
    # seq 32 is inside the window: every layer attends to 32 tokens
    assert cfg.flops_per_token(32) == 6 * n + 12 * cfg.n_heads * cfg.head_dim * 32 * cfg.n_layers
    # seq 1024: two global layers see 1024, two sliding layers their window of 64
    assert cfg.flops_per_token(1024) == 6 * n + 12 * cfg.n_heads * cfg.head_dim * (2 * 1024 + 2 * 64)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match=r"n_heads \(6\) must be a multiple of n_kv_heads \(4\)"):
        ModelConfig(n_heads=6, n_kv_heads=4)
    with pytest.raises(ValueError, match="layer_types has 3 entries for 4 layers"):
        ModelConfig(layer_types=[FULL, SLIDING, FULL])
    with pytest.raises(ValueError, match="unknown model preset 'cwm-7b'; choose one of: cwm-32b, cwm-tiny, cwm-small"):
        get_preset("cwm-7b")
    with pytest.raises(ValueError, match="config.json: model_type is 'llama', expected 'cwm'"):
        ModelConfig.from_hf_dict({"model_type": "llama"})


def cwm(*args):
    return subprocess.run([sys.executable, "-m", "cwm", *args], capture_output=True, text=True, timeout=120)


def test_model_info_cli():
    result = cwm("model", "info", "--preset", "cwm-32b", "--context", "131072")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "params: 32581097472"
    assert "GSSSGSSSG" in result.stdout and "global layers (17): 0, 4," in result.stdout
    assert "weights (bf16): 60.69 GiB" in result.stdout
    # 17 global layers x 131072 tokens + 47 sliding x 8192, 8 kv heads x 128 x (k, v) x 2 bytes
    assert f"kv cache (bf16, 131072 tokens, batch 1): {(17 * 131072 + 47 * 8192) * 4096 / 2**30:.2f} GiB" in result.stdout
    hf_rule = cwm("model", "info", "--preset", "cwm-32b", "--global-rule", "hf")
    assert "global layers (16):" in hf_rule.stdout
    bad = cwm("model", "info", "--preset", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown model preset 'nope'") and "Traceback" not in bad.stderr


def _write_config(tmp_path, content) -> str:
    (tmp_path / "config.json").write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return str(tmp_path)


TINY_HF = get_preset("cwm-tiny").to_hf_dict()


@pytest.mark.parametrize("content, message", [
    ([TINY_HF], "expected a JSON object of model settings, found a list"),
    (b'{"model_type": "cwm", ', "not valid UTF-8 JSON"),
    (b'{"model_type": "cwm\xff"}', "not valid UTF-8 JSON"),
    ({"model_type": "cwm", "hidden_size": 64}, "missing field 'num_attention_heads'"),
    ({k: v for k, v in TINY_HF.items() if k != "vocab_size"}, "missing field 'vocab_size'"),
    (TINY_HF | {"hidden_size": "big"}, "hidden_size must be an integer, not 'big'"),
    (TINY_HF | {"rope_parameters": [1, 2]}, "rope_parameters"),
    (TINY_HF | {"num_hidden_layers": 10**8, "layer_types": None}, "num_hidden_layers = 100000000 is outside [1, 1024]"),
    (TINY_HF | {"hidden_size": 10**9}, "hidden_size = 1000000000 is outside"),
    (TINY_HF | {"vocab_size": 10**12}, "vocab_size = 1000000000000 is outside"),
    (TINY_HF | {"intermediate_size": -5}, "intermediate_size = -5 is outside"),
    (TINY_HF | {"rms_norm_eps": None}, "rms_norm_eps must be a positive finite number"),
])
def test_model_info_refuses_a_corrupt_or_absurd_config_json_in_one_line(tmp_path, content, message):
    result = cwm("model", "info", "--model", _write_config(tmp_path, content))  # a hang fails on the timeout
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and str(tmp_path / "config.json") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_the_bounds_admit_the_32b_release_and_larger_real_models(tmp_path):
    result = cwm("model", "info", "--model", _write_config(tmp_path, get_preset("cwm-32b").to_hf_dict()))
    assert result.returncode == 0 and result.stdout.strip().endswith("params: 32581097472")
    # Llama 3.1 405B's shape (126 layers, d 16384, 128/8 heads, ffn 53248, vocab 128256, 128k context)
    big = ModelConfig(vocab_size=128256, dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, head_dim=128,
                      ffn_dim=53248, max_seq_len=131072, sliding_window=None)
    assert 400e9 < big.num_params() < 420e9
