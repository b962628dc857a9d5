"""KV cache and sampling on a real tiny model: cached decoding equals uncached decoding."""

import math

import pytest
import torch
import torch.nn.functional as F

from cwm.model import Transformer, generate, get_preset, sample
from cwm.model.attention import Blocked, Masked, attention_mask, blocked_window_mask, chunk_plan
from cwm.model.cache import ROLLBACK_SLOTS, KVCache
from cwm.model.transformer import Linear, decode_layout

CFG = get_preset("cwm-tiny", sliding_window=16, max_seq_len=256)  # a small window the tests cross often


@pytest.fixture(scope="module")
def model():
    m = Transformer(CFG)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # unit-scale weights: confident, varied predictions
        for name, p in m.named_parameters():
            if not name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) * 1.5)
    return m.eval()


def greedy_uncached(model, prompt, n):
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt) :]


def prompt(n, seed):
    return torch.randint(0, CFG.vocab_size - 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("prompt_len", [1, 10, 40])  # shorter and longer than the window
def test_cached_greedy_equals_uncached(model, prompt_len):
    p = prompt(prompt_len, prompt_len)
    new = generate(model, p, 40, stop_tokens=())
    assert new == greedy_uncached(model, p, 40)
    assert len(set(new)) > 5  # a real continuation, not one repeated token


def test_batch_with_padding_equals_one_by_one(model):
    prompts = [prompt(n, n) for n in (3, 45, 12)]  # the long one prefills in blocks, with padding docs
    batch = generate(model, prompts, 30, stop_tokens=())
    assert batch == [generate(model, p, 30, stop_tokens=()) for p in prompts]


def test_chunks_after_prefill_equal_one_pass(model):
    """Forcing several tokens into a warm cache (the debugger's forced frames) gives the logits of
    one uncached pass, on global layers and across the wrap of the sliding rings."""
    tokens = torch.tensor([prompt(200, 7)])
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache(CFG, 1, 210)
        pieces, start = [], 0
        # chunks longer and shorter than the window of 16 and the rings of 16 + 64 slots
        for size in (5, 1, 20, 1, 1, 30, 12, 90, 1, 1, 38):
            positions = torch.arange(start, start + size)
            pieces.append(model(tokens[:, start : start + size], positions=positions, cache=cache))
            start += size
    assert (torch.cat(pieces, dim=1) - full).abs().max() <= 1e-4


def test_sliding_layers_stop_growing_at_the_window():
    short, long = KVCache(CFG, 1, 200), KVCache(CFG, 1, 256)
    windows = [CFG.window(i) for i in range(CFG.n_layers)]
    assert [k.shape[2] for k in long.keys] == [16 + ROLLBACK_SLOTS if w else 256 for w in windows]
    per_global_token = 2 * CFG.n_kv_heads * CFG.head_dim * 4 * windows.count(None)
    assert long.nbytes() - short.nbytes() == 56 * per_global_token  # only global layers grow
    rollback = 2 * CFG.n_kv_heads * CFG.head_dim * 4 * ROLLBACK_SLOTS * (len(windows) - windows.count(None))
    assert long.nbytes() == CFG.kv_cache_bytes(256, bytes_per_value=4) + rollback


def test_stop_tokens_and_streaming(model):
    p = prompt(10, 1)
    free = generate(model, p, 30, stop_tokens=())
    stop = free[12]
    first = free.index(stop)
    streamed = []
    out = generate(model, [p, p], 30, stop_tokens=[stop], on_token=lambda row, tok: streamed.append((row, tok)))
    assert out == [free[: first + 1]] * 2  # ends with the stop token, included
    assert [tok for row, tok in streamed if row == 1] == out[1]
    assert len(streamed) == 2 * (first + 1)


def test_model_eos_ids_stop_by_default(model):
    p = prompt(10, 1)
    free = generate(model, p, 30, stop_tokens=())
    eos_model = Transformer(get_preset("cwm-tiny", sliding_window=16, max_seq_len=256, eos_token_ids=(free[5],)))
    eos_model.load_state_dict(model.state_dict())
    assert generate(eos_model.eval(), p, 30) == free[: free.index(free[5]) + 1]


def test_sampling_rules():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    assert sample(logits[:1]).tolist() == [0]  # greedy
    counts = torch.bincount(sample(logits, temperature=1.0, generator=g), minlength=4) / 4000
    assert torch.allclose(counts, torch.softmax(logits[0], -1), atol=0.03)
    # top_p 0.8: tokens 0 and 1 hold 0.59 + 0.22; tokens 2 and 3 are never drawn
    nucleus = sample(logits, temperature=1.0, top_p=0.8, generator=g)
    assert set(nucleus.tolist()) == {0, 1}
    assert sample(logits, temperature=1.0, top_p=0.1, generator=g).eq(0).all()
    hot = torch.bincount(sample(logits, temperature=5.0, generator=g), minlength=4)
    assert hot.min() > 500  # high temperature flattens


def test_seeded_sampling_is_reproducible(model):
    p = prompt(8, 2)
    a = generate(model, p, 20, temperature=0.8, top_p=0.95, seed=3, stop_tokens=())
    b = generate(model, p, 20, temperature=0.8, top_p=0.95, seed=3, stop_tokens=())
    assert a == b and a != generate(model, p, 20, temperature=0.8, top_p=0.95, seed=4, stop_tokens=())


def test_errors(model):
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[1, 2], []], 5)
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        generate(model, prompt(200, 0), 100)


def test_bfloat16(model):
    """The dtype of the released weights: logits close to float32, generation runs in bf16."""
    half = Transformer(CFG)
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16).eval()
    x = torch.tensor([prompt(40, 3)])
    with torch.no_grad():
        full, low = model(x), half(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - full).abs().max() < 0.1 * full.abs().max()
    assert len(generate(half, x[0].tolist(), 10, stop_tokens=())) == 10


@pytest.mark.parametrize("window", [None, 40])
@pytest.mark.parametrize("packed", [False, True])
def test_attention_paths_agree(window, packed):
    """CPU attends in query chunks (chunk_plan), GPUs by blocks of the window or one masked call:
    all give the one masked SDPA, across a partial last chunk and documents inside a row."""
    g = torch.Generator().manual_seed(0)
    B, H, K, T, D = 2, 4, 2, 150, 8
    q, k, v = (torch.randn(B, n, T, D, generator=g) for n in (H, K, K))
    docs = torch.tensor([[0] * 30 + [1] * 120, [0] * 100 + [1] * 50]) if packed else None
    pos = torch.arange(T)
    mask = attention_mask(pos, pos, window, docs, docs)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask if docs is None else mask[:, None], enable_gqa=True)
    assert (Masked(mask if docs is None else mask[:, None]).attend(q, k, v) - want).abs().max() < 1e-6
    plan = chunk_plan(T, window, docs, size=32)
    assert len(plan.chunks) == 5 and plan.chunks[-1].mask.shape[-2] == 150 - 4 * 32
    if window is not None:  # chunks see only the keys in reach, not all T
        assert max(c.mask.shape[-1] for c in plan.chunks) == window - 1 + 32
    assert (plan.attend(q, k, v) - want).abs().max() < 1e-5
    if window is not None:
        blocked = Blocked(window, blocked_window_mask(T, window, docs)).attend(q, k, v)
        assert (blocked - want).abs().max() < 1e-5


def test_decode_layout_routes_few_rows_and_cleans_up(model):
    """Inside decode_layout, up to 16 rows without autograd go through the [in, out] copy (equal
    results); more rows, or autograd, use the weight; after it, and after an exception from
    on_token, no copy is left."""
    head = model.lm_head
    one, many = torch.randn(1, 1, CFG.dim), torch.randn(1, 17, CFG.dim)
    with torch.inference_mode(), decode_layout(model):
        assert head.decode_weight.shape == (CFG.dim, CFG.vocab_size) and head.decode_weight.is_contiguous()
        assert torch.allclose(head(one), F.linear(one, head.weight), atol=1e-5)
        head.decode_weight = torch.zeros_like(head.decode_weight)  # a marker: shows which path ran
        assert head(one).abs().max() == 0 and head(many).abs().max() > 0
    with decode_layout(model):
        assert head(one).abs().max() > 0  # autograd on: the weight
    assert all(m.decode_weight is None for m in model.modules() if isinstance(m, Linear))

    def stop(row, token):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(model, prompt(5, 0), 10, stop_tokens=(), on_token=stop)
    assert all(m.decode_weight is None for m in model.modules() if isinstance(m, Linear))


def test_check_every_and_stop_strings_give_the_same_tokens(model):
    """Reading the chosen tokens back every k steps (GPUs) ends rows exactly where reading every
    token does, for stop tokens and for stop strings (here: a token's text, via a toy decode)."""
    prompts = [prompt(n, n) for n in (5, 20)]
    free = generate(model, prompts, 40, stop_tokens=())
    stop = free[0][17]
    every = generate(model, prompts, 40, stop_tokens=[stop])
    assert every[0] == free[0][: free[0].index(stop) + 1]
    for k in (3, 8, 64):
        assert generate(model, prompts, 40, stop_tokens=[stop], check_every=k) == every

    def decode(ids):
        return " ".join(f"<{t}>" for t in ids)

    target = free[1][11]
    cut = free[1][: free[1].index(target) + 1]
    streamed = []
    for k in (1, 5):
        out = generate(model, prompts[1], 40, stop_tokens=(), stop_strings=[f"<{target}>"], decode=decode,
                       check_every=k, on_token=lambda row, tok: streamed.append(tok))
        assert out == cut and streamed == cut
        streamed.clear()
    with pytest.raises(ValueError, match="need `decode`"):
        generate(model, prompts[1], 4, stop_strings=["x"])


def test_prefix_reuse_gives_the_same_tokens(model):
    """A kept cache (the debugger's growing prompts) gives exactly the tokens of a fresh one, and
    computes only what it does not hold: on a prompt that extends the last one, one cut back a
    little (within the rings' spare slots), one cut back far (the rings were overwritten: starts
    over) and one longer than the rings."""
    cache = KVCache(CFG, 1, 256)
    p0 = prompt(40, 9)
    out0 = generate(model, p0, 30, stop_tokens=(), cache=cache)
    assert out0 == generate(model, p0, 30, stop_tokens=()) and cache.reused == 0
    assert cache.ids == p0 + out0[:-1]
    p1 = p0 + out0 + prompt(3, 10)  # the last answer, then forced tokens
    p2 = p1[:60] + prompt(5, 11)
    plans = [  # (prompt, tokens reused); each leaves prompt + 19 tokens in the cache
        (p1, len(p0) + 29),  # extends the last request: all but its last token
        (p1[:60], 59),  # cut back 32 tokens (the rings of 16 + 64 slots still hold the last 16)
        (p2, 60),
        (p2 + prompt(120, 12), 65),  # longer than the rings: they wrap
        (p1[:20], 0),  # too far back (positions 4..19 were overwritten): computed again
    ]
    for p, reused in plans:
        want = generate(model, p, 20, stop_tokens=())
        assert generate(model, p, 20, stop_tokens=(), cache=cache) == want
        assert cache.reused == reused
    with pytest.raises(ValueError, match="one prompt at a time"):
        generate(model, [p0, p0], 5, cache=cache)
    with pytest.raises(ValueError, match="holds 50 tokens; 60 are needed"):
        generate(model, p0, 20, cache=KVCache(CFG, 1, 50))


def test_allowed_constrains_each_row(model):
    """`allowed` sees each row's new tokens so far and picks among the ids it returns; None frees it."""
    p = prompt(10, 1)
    free = generate(model, p, 6, stop_tokens=())
    forced = [t for t in range(40, 46) if t not in free][:2]

    def allowed(tokens):  # the first three tokens are forced to alternate, the rest are free
        return [forced[len(tokens) % 2]] if len(tokens) < 3 else None

    got = generate(model, [p, p], 6, stop_tokens=(), allowed=allowed)
    assert got[0] == got[1] and got[0][:3] == [forced[0], forced[1], forced[0]]
    assert got[0][3:] == greedy_uncached(model, p + got[0][:3], 3)  # free again: plain greedy
    two = generate(model, p, 4, stop_tokens=(), allowed=lambda tokens: forced, temperature=1.0, seed=0)
    assert set(two) <= set(forced)
