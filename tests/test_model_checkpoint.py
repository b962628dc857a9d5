"""Checkpoint I/O: the HF layout (ours and the release's config.json), Meta's layout, and errors."""

import dataclasses
import json
import math
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from cwm.model import CheckpointError, Transformer, get_preset, load_pretrained, save_pretrained
from cwm.model.convert import convert_meta_to_hf, meta_to_hf_rows, save_meta
from cwm.model.transformer import apply_rope, rope_inv_freq, rope_table

CFG = get_preset("cwm-tiny", n_layers=6)  # Meta rule: G S S S G G


def random_model(cfg=CFG, seed=0) -> Transformer:
    model = Transformer(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if name.endswith("norm.weight") else 1.5 / math.sqrt(p.shape[-1])
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
    return model.eval()


def tokens(n=90, seed=1):
    return torch.randint(0, CFG.vocab_size, (2, n), generator=torch.Generator().manual_seed(seed))


def same_logits(a, b, x=None):
    x = tokens() if x is None else x
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item() <= 1e-4


@pytest.fixture
def sharded(tmp_path):
    """Our checkpoint in 3+ shards."""
    model = random_model()
    save_pretrained(model, tmp_path / "ckpt", max_shard_bytes=600_000)
    return model, tmp_path / "ckpt"


def test_save_load_round_trip_sharded(sharded):
    model, path = sharded
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in path.iterdir()) == sorted(files + ["config.json", "model.safetensors.index.json"])
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "cwm" and config["sliding_window"] == 64
    assert config["layer_types"] == ["full_attention"] + ["sliding_attention"] * 3 + ["full_attention"] * 2
    assert config["rope_parameters"]["rope_type"] == "llama3"
    loaded = load_pretrained(path)
    assert loaded.cfg == dataclasses.replace(CFG, global_rule="hf", layer_types=CFG.attention_types())
    assert same_logits(model, loaded)
    assert load_pretrained(path, dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16


def test_save_keeps_other_files_and_replaces_weights(sharded):
    _, path = sharded
    (path / "tokenizer.json").write_text("{}")
    other = random_model(seed=9)
    save_pretrained(other, path)  # one shard now: the old shards must go
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json", "tokenizer.json"
    ]
    assert same_logits(other, load_pretrained(path))


def release_config(n_layers=6, layer_types=None, rope_style="v4"):
    """config.json as facebook/cwm ships it, scaled down (it stands in for the 32B weights, which
    this machine cannot hold). v4: `rope_theta` + `rope_scaling` (transformers 4.57, the first
    upload); v5: `rope_parameters`."""
    rope = {"factor": 16.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 64, "rope_type": "llama3"}
    config = {
        "architectures": ["CwmForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009], "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
        "initializer_range": 0.02, "intermediate_size": 96, "layer_types": layer_types,
        "max_position_embeddings": 1024, "model_type": "cwm", "num_attention_heads": 4, "num_hidden_layers": n_layers,
        "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "sliding_window": 32,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.57.0.dev0",
        "use_cache": True, "vocab_size": 128256,
    }
    if rope_style == "v4":
        config |= {"rope_theta": 1000000.0, "rope_scaling": rope}
    else:
        config |= {"rope_parameters": rope | {"rope_theta": 1000000.0}}
    return config


@pytest.mark.parametrize("rope_style", ["v4", "v5"])
def test_release_layout_loads(rope_style, tmp_path):
    from transformers import CwmConfig, CwmForCausalLM

    # A pattern neither rule gives, so it can only come from the file's layer_types.
    layer_types = ["full_attention", "sliding_attention", "full_attention", "sliding_attention",
                   "sliding_attention", "full_attention"]
    config = release_config(layer_types=layer_types, rope_style=rope_style)
    (tmp_path / "config.json").write_text(json.dumps(config))
    hf = CwmForCausalLM(CwmConfig(**{k: v for k, v in config.items() if k not in ("torch_dtype", "transformers_version")}))
    g = torch.Generator().manual_seed(2)
    state = {  # bf16 like the release; norms around 1
        k: (torch.randn(v.shape, generator=g) * (0.1 if "norm" in k else 0.2) + ("norm" in k)).to(torch.bfloat16)
        for k, v in hf.state_dict().items()
    }
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file, metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))

    ours = load_pretrained(tmp_path)
    assert ours.cfg.attention_types() == tuple(layer_types)
    assert (ours.cfg.rope_theta, ours.cfg.rope_factor, ours.cfg.eos_token_ids) == (1e6, 16.0, (128001, 128008, 128009))
    assert ours.lm_head.weight.dtype == torch.bfloat16
    ours = load_pretrained(tmp_path, dtype=torch.float32)
    theirs = CwmForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    x = torch.randint(0, 128256, (1, 80))
    with torch.no_grad():
        assert (ours(x) - theirs(x).logits).abs().max() <= 1e-4


# --- errors: each names the file and the tensor ----------------------------------------------------


def shard_holding(path, name):
    index = json.loads((path / "model.safetensors.index.json").read_text())
    return path / index["weight_map"][name]


def test_missing_shard(sharded):
    _, path = sharded
    shard = shard_holding(path, "model.layers.3.mlp.down_proj.weight")
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name}: shard file missing \(it holds tensor 'model\."):
        load_pretrained(path)


def test_truncated_shard(sharded):
    _, path = sharded
    shard = shard_holding(path, "lm_head.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated: tensor '[\w.]+' needs bytes up to"):
        load_pretrained(path)
    shard.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: truncated or not a safetensors file"):
        load_pretrained(path)


def test_wrong_shape(sharded):
    _, path = sharded
    name = "model.layers.2.self_attn.k_proj.weight"
    shard = shard_holding(path, name)
    tensors = load_file(shard)
    tensors[name] = torch.zeros(16, 64)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{shard.name}: tensor '{name}' has shape \[16, 64\], config.json implies \[32, 64\]"):
        load_pretrained(path)


def test_missing_tensor(sharded):
    _, path = sharded
    name = "model.layers.4.post_attention_layernorm.weight"
    shard = shard_holding(path, name)
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{shard.name}: tensor '{name}' is listed in .* but not in the file"):
        load_pretrained(path)
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    del index["weight_map"][name]
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"model.safetensors.index.json: tensor '{name}' is missing"):
        load_pretrained(path)


def test_mismatched_config_and_cli_error(sharded):
    _, path = sharded
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 5, "layer_types": config["layer_types"][:5]}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model.layers.5.\w"):
        load_pretrained(path)
    (path / "config.json").unlink()
    result = subprocess.run([sys.executable, "-m", "cwm", "model", "info", "--model", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {path / 'config.json'} not found: {path} is not a Hugging Face checkpoint directory"


# --- Meta's layout ---------------------------------------------------------------------------------


def test_meta_rows_are_meta_rope():
    """Independent of our converter's inverse: Meta's RoPE (complex rotation of interleaved pairs,
    as in Meta's Llama code) on Meta rows gives the same q.k scores as HF's RoPE on converted rows."""
    cfg, g = get_preset("cwm-tiny"), torch.Generator().manual_seed(0)
    H, D = cfg.n_heads, cfg.head_dim
    wq_meta, wk_meta = torch.randn(H * D, cfg.dim, generator=g), torch.randn(H * D, cfg.dim, generator=g)
    x = torch.randn(12, cfg.dim, generator=g)
    pos = torch.arange(12).float()
    freqs = torch.polar(torch.ones(12, D // 2), torch.outer(pos, rope_inv_freq(cfg)))

    def meta_rope(w):  # Llama reference: view_as_complex over (x0, x1), (x2, x3), ...
        v = (x @ w.T).view(12, H, D // 2, 2)
        return torch.view_as_real(torch.view_as_complex(v) * freqs[:, None]).flatten(2)

    def hf_rope(w):
        return apply_rope((x @ w.T).view(12, H, D), *rope_table(pos, rope_inv_freq(cfg), torch.float32))

    meta_scores = torch.einsum("qhd,khd->hqk", meta_rope(wq_meta), meta_rope(wk_meta))
    hf_scores = torch.einsum("qhd,khd->hqk", hf_rope(meta_to_hf_rows(wq_meta, H)), hf_rope(meta_to_hf_rows(wk_meta, H)))
    assert torch.allclose(meta_scores, hf_scores, atol=1e-3)
    assert not torch.allclose(meta_scores, torch.einsum("qhd,khd->hqk", hf_rope(wq_meta), hf_rope(wk_meta)), atol=1)


def test_meta_layout_converts(tmp_path):
    model = random_model(seed=4)
    save_meta(model, tmp_path / "meta")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())["model"]
    assert params["window_attn"] == {"window_pattern": 4, "local_window": 64, "global_last_layer": True}
    state = torch.load(tmp_path / "meta" / "consolidated.00.pth")
    assert "layers.0.attention.wq.weight" in state and "tok_embeddings.weight" in state and "output.weight" in state
    assert not torch.equal(state["layers.0.attention.wq.weight"], model.state_dict()["layers.0.self_attn.qkv_proj.weight"][:64])
    result = subprocess.run(
        [sys.executable, "-m", "cwm", "convert", str(tmp_path / "meta"), str(tmp_path / "hf")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    converted = load_pretrained(tmp_path / "hf")
    assert converted.cfg.attention_types() == CFG.attention_types()
    assert same_logits(model, converted)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP in one process, as intended
def test_meta_dcp_layout_converts(tmp_path):
    import torch.distributed.checkpoint as dcp

    model = random_model(seed=5)
    save_meta(model, tmp_path / "meta")
    state = torch.load(tmp_path / "meta" / "consolidated.00.pth")
    (tmp_path / "meta" / "consolidated.00.pth").unlink()
    dcp.save({"model": state}, checkpoint_id=tmp_path / "meta")  # facebookresearch/cwm saves {"model": ...}
    assert same_logits(model, load_pretrained(convert_meta_to_hf(tmp_path / "meta", tmp_path / "hf")))


def test_meta_layout_errors(tmp_path):
    save_meta(random_model(seed=6), tmp_path)
    file = tmp_path / "consolidated.00.pth"
    state = torch.load(file)
    state["layers.1.attention.wk.weight"] = torch.zeros(16, 64)
    torch.save(state, file)
    with pytest.raises(CheckpointError, match=r"consolidated.00.pth: tensor 'layers.1.attention.wk.weight' has shape \[16, 64\]"):
        convert_meta_to_hf(tmp_path, tmp_path / "out")
    del state["layers.1.attention.wk.weight"]
    torch.save(state, file)
    with pytest.raises(CheckpointError, match=r"consolidated.00.pth: tensor 'layers.1.attention.wk.weight' is missing"):
        convert_meta_to_hf(tmp_path, tmp_path / "out")
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"consolidated.00.pth: cannot be read"):
        convert_meta_to_hf(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_meta_global_window_covering_the_context_converts(tmp_path):
    """The release's params.json may carry window_attn.global_window: at >= the context it is full
    attention and converts; below the context (windowed global layers) it is refused in one line."""
    model = random_model(seed=7)
    save_meta(model, tmp_path / "meta")
    params_file = tmp_path / "meta" / "params.json"
    params = json.loads(params_file.read_text())
    context = params["model"]["max_seq_len"]
    for i, window in enumerate((context, 2 * context)):
        params["model"]["window_attn"]["global_window"] = window
        params_file.write_text(json.dumps(params))
        result = subprocess.run([sys.executable, "-m", "cwm", "convert", str(tmp_path / "meta"), str(tmp_path / f"hf{i}")],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        converted = load_pretrained(tmp_path / f"hf{i}")
        assert converted.cfg.attention_types() == CFG.attention_types() and same_logits(model, converted)
    params["model"]["window_attn"]["global_window"] = context - 1
    params_file.write_text(json.dumps(params))
    result = subprocess.run([sys.executable, "-m", "cwm", "convert", str(tmp_path / "meta"), str(tmp_path / "bad")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"global_window is {context - 1}, less than the context (max_seq_len {context})" in result.stderr
    assert not (tmp_path / "bad").exists()


# --- corrupt checkpoints through the CLI -----------------------------------------------------------


@pytest.fixture(scope="module")
def servable(tmp_path_factory, tok):
    """A complete tiny checkpoint (weights + tokenizer) that `cwm serve` would serve."""
    from conftest import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("servable") / "ckpt", tok, max_seq_len=256)


def _shard(path):
    return sorted(path.glob("model-*.safetensors"))[0]


def _with_header(path, edit):
    """Rewrite the first shard's safetensors header as edit(header) (JSON), keeping its data."""
    raw = _shard(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    new = edit(json.loads(raw[8 : 8 + n]))
    new = new if isinstance(new, bytes) else json.dumps(new).encode()
    _shard(path).write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def _each_tensor(field, value):
    return lambda h: {k: (v if k == "__metadata__" else v | {field: value}) for k, v in h.items()}


def _tokenizer_edit(edit):
    def apply(path):
        data = json.loads((path / "tokenizer.json").read_text())
        (path / "tokenizer.json").write_text(json.dumps(edit(data)))
    return apply


CORRUPTIONS = {  # name -> (how to damage the checkpoint, the file the message must name, words it must say)
    "header not JSON": (lambda p: _with_header(p, lambda h: b"\xff\xfe not json at all"), "model-00001", "header is not JSON"),
    "header a list": (lambda p: _with_header(p, lambda h: [1, 2]), "model-00001", "not a JSON object"),
    "shape a string": (lambda p: _with_header(p, _each_tensor("shape", "big")), "model-00001", "damaged header"),
    "offsets of the wrong type": (lambda p: _with_header(p, _each_tensor("data_offsets", ["0", None])), "model-00001", "damaged header"),
    "truncated shard": (lambda p: _shard(p).write_bytes(_shard(p).read_bytes()[:5000]), "model-00001", "truncated"),
    "index a list": (lambda p: (p / "model.safetensors.index.json").write_text("[]"), "index.json", "weight_map"),
    "index map of numbers": (lambda p: (p / "model.safetensors.index.json").write_text('{"weight_map": {"a": 1}}'),
                             "index.json", "weight_map"),
    "index not UTF-8": (lambda p: (p / "model.safetensors.index.json").write_bytes(b'{"\xff": 1}'), "index.json", "not valid UTF-8 JSON"),
    "config a list": (lambda p: (p / "config.json").write_text("[]"), "config.json", "found a list"),
    "tokenizer not UTF-8": (lambda p: (p / "tokenizer.json").write_bytes(b"\xff\xfe{}"), "tokenizer.json", "not valid JSON"),
    "tokenizer truncated": (lambda p: (p / "tokenizer.json").write_bytes((p / "tokenizer.json").read_bytes()[:700]),
                            "tokenizer.json", "not valid JSON"),
    "tokenizer added_tokens wrong": (_tokenizer_edit(lambda d: d | {"added_tokens": [5, 6]}), "tokenizer.json", "added_tokens"),
    "tokenizer model wrong": (_tokenizer_edit(lambda d: d | {"model": {"type": "BPE", "vocab": "x"}}),
                              "tokenizer.json", "not a valid Hugging Face tokenizer file"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_cwm_serve_refuses_a_corrupt_checkpoint_in_one_line(servable, tmp_path, name):
    import shutil

    from conftest import free_port

    damage, file, words = CORRUPTIONS[name]
    path = tmp_path / "ckpt"
    shutil.copytree(servable, path)
    damage(path)
    result = subprocess.run([sys.executable, "-m", "cwm", "serve", "--model", str(path), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr, result.stderr
    assert file in result.stderr and words in result.stderr, result.stderr
