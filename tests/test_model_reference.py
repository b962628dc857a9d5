"""Our network against transformers' CwmForCausalLM, the reference: same weights, same logits.

Random small configs with sequences longer than the sliding window, several GQA ratios and both
global-layer rules; weights go ours -> HF checkpoint -> theirs and theirs -> HF checkpoint -> ours.
"""

import dataclasses
import math

import pytest
import torch

from cwm.model import ModelConfig, Transformer, load_pretrained, save_pretrained

transformers = pytest.importorskip("transformers")
from transformers import CwmConfig, CwmForCausalLM  # noqa: E402

CONFIGS = [  # (n_heads, n_kv_heads, head_dim, n_layers, window, rule, rope_factor)
    (4, 2, 16, 4, 16, "meta", 4.0),
    (4, 1, 8, 5, 24, "hf", 4.0),
    (6, 3, 8, 6, 16, "meta", None),
    (4, 4, 16, 4, 32, "hf", 8.0),
]


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights of unit-scale activations (sharp attention, so a wrong mask shows) and norms != 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) * 1.5)
    return model.eval()


def make_config(n_heads, n_kv_heads, head_dim, n_layers, window, rule, rope_factor) -> ModelConfig:
    return ModelConfig(
        vocab_size=97, dim=n_heads * head_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
        head_dim=head_dim, ffn_dim=40, max_seq_len=256, sliding_window=window, global_rule=rule,
        rope_theta=10_000.0, rope_factor=rope_factor, rope_original_max_seq_len=64,
    )


def load_hf(path) -> CwmForCausalLM:
    model, info = CwmForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    return model.eval()


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"h{s[0]}kv{s[1]}-L{s[3]}-w{s[4]}-{s[5]}")
def test_ours_saved_equals_transformers_loaded(spec, tmp_path):
    cfg = make_config(*spec)
    ours = randomize(Transformer(cfg), seed=1)
    save_pretrained(ours, tmp_path)
    theirs = load_hf(tmp_path)
    assert theirs.config.layer_types == list(cfg.attention_types())
    w = cfg.sliding_window
    tokens = torch.randint(0, cfg.vocab_size, (2, 3 * w + 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for length in (w // 2, w + w // 2):  # within the window; a masked window (blocks from 2 * window up)
            assert (ours(tokens[:, :length]) - theirs(tokens[:, :length]).logits).abs().max() <= 1e-4
        ours_logits, theirs_logits = ours(tokens), theirs(tokens).logits
        # The window matters for these weights: without it the logits past the window change.
        unwindowed = Transformer(dataclasses.replace(cfg, sliding_window=None))
        unwindowed.load_state_dict(ours.state_dict())
        late = slice(cfg.sliding_window + 1, None)
        assert (unwindowed(tokens)[:, late] - ours_logits[:, late]).abs().max() > 1e-2
    assert (ours_logits - theirs_logits).abs().max() <= 1e-4


@pytest.mark.parametrize("rule", ["meta", "hf"])
def test_transformers_saved_equals_ours_loaded(rule, tmp_path):
    layer_types = list(make_config(4, 2, 16, 8, 16, rule, 4.0).attention_types())
    hf_cfg = CwmConfig(
        vocab_size=101, hidden_size=48, intermediate_size=72, num_hidden_layers=8, num_attention_heads=6,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=16, layer_types=layer_types,
        rope_parameters={"rope_type": "llama3", "rope_theta": 50_000.0, "factor": 4.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    )
    theirs = randomize(CwmForCausalLM(hf_cfg), seed=3)
    theirs.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path)
    assert ours.cfg.attention_types() == tuple(layer_types)
    tokens = torch.randint(0, 101, (3, 70), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (ours(tokens) - theirs(tokens).logits).abs().max() <= 1e-4


def test_document_masking_equals_separate_documents():
    """A packed row with doc_ids gives each document the logits it gets alone."""
    cfg = make_config(4, 2, 16, 4, 16, "meta", 4.0)
    model = randomize(Transformer(cfg), seed=5)
    g = torch.Generator().manual_seed(6)
    docs = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in (30, 7, 45)]
    packed = torch.cat(docs)[None]
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        logits = model(packed, doc_ids)[0]
        alone = torch.cat([model(d[None])[0] for d in docs])
        assert (logits - alone).abs().max() <= 1e-4
        assert (model(packed)[0, 30:] - alone[30:]).abs().max() > 1e-2  # without doc_ids they leak


def test_backward_and_init():
    cfg = make_config(4, 2, 16, 4, 16, "meta", 4.0)
    model = Transformer(cfg)
    model.init_weights(seed=0)
    o = model.layers[0].self_attn.o_proj.weight
    q = model.layers[0].self_attn.qkv_proj.weight
    # LeCun: 1/sqrt(fan_in), the residual writers also 1/sqrt(2 * n_layers); embedding N(0, 1)
    assert abs(q.std().item() * cfg.dim**0.5 - 1) < 0.1
    assert abs(o.std().item() - (cfg.n_heads * cfg.head_dim) ** -0.5 / math.sqrt(8)) < 0.01
    assert abs(model.embed_tokens.weight.std().item() - 1.0) < 0.05
    tokens = torch.randint(0, cfg.vocab_size, (2, 40))
    loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    # a fresh model is near uniform: unit-variance logits cost about 0.5 nat above log(V)
    assert 0 < loss.item() - math.log(cfg.vocab_size) < 1.0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # Built on the meta device, materialized, initialized: the trainer's path; same seed, same weights.
    with torch.device("meta"):
        lazy = Transformer(cfg)
    lazy = lazy.to_empty(device="cpu")
    lazy.init_weights(seed=0)
    fresh = Transformer(cfg)
    fresh.init_weights(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(lazy.state_dict().values(), fresh.state_dict().values()))
    assert torch.equal(lazy.inv_freq, fresh.inv_freq)
