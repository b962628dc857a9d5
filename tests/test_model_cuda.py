"""The same checks on a GPU, where there is one (skipped elsewhere, CI included): equality with
transformers' CwmForCausalLM and cached = uncached greedy decoding, on CUDA kernels."""

import math

import pytest
import torch

from cwm.model import Transformer, generate, get_preset, save_pretrained

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def model():
    torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 for the 1e-4 comparison
    cfg = get_preset("cwm-tiny", sliding_window=16, max_seq_len=256)
    m = Transformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) * 1.5)
    return m.cuda().eval()


def test_equals_transformers_on_cuda(model, tmp_path):
    from transformers import CwmForCausalLM

    save_pretrained(model, tmp_path)
    theirs = CwmForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).cuda().eval()
    tokens = torch.randint(0, 4096, (2, 90), device="cuda")
    doc_ids = torch.tensor([[0] * 30 + [1] * 60] * 2, device="cuda")
    with torch.no_grad():
        for length in (10, 24, 90):  # inside the window, masked window, blocked window
            assert (model(tokens[:, :length]) - theirs(tokens[:, :length]).logits).abs().max() <= 1e-4
        packed, alone = model(tokens, doc_ids), torch.cat((model(tokens[:, :30]), model(tokens[:, 30:])), 1)
        assert (packed - alone).abs().max() <= 1e-4


def test_cached_equals_uncached_on_cuda(model):
    prompts = [torch.randint(0, 4096, (n,)).tolist() for n in (5, 40)]
    out = generate(model, prompts, 30, stop_tokens=())
    for p, new in zip(prompts, out):
        tokens = list(p)
        with torch.no_grad():
            for _ in range(30):
                tokens.append(int(model(torch.tensor([tokens], device="cuda"))[0, -1].argmax()))
        assert new == tokens[len(p) :]
    half = generate(model.to(torch.bfloat16), prompts, 30, stop_tokens=())
    model.float()
    assert [len(h) for h in half] == [30, 30]
