"""GPU checks of the network: bf16/CUDA equality with transformers' CwmForCausalLM, training-step
throughput and MFU, and cached generation speed — ours against `CwmForCausalLM` in one run.

Needs a CUDA GPU (run on the lent device machine; CI never runs this). Prints one table per
check and, last, `train_ratio: X` and `generate_ratio: Y` (ours over transformers, tokens/s).

    PYTHONPATH=src python benchmarks/gpu.py --out results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from cwm.model import ModelConfig, Transformer, generate
from cwm.model.checkpoint import to_hf_state_dict

# Dense bf16 peak of the cards this project is measured on (datasheet, without sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

# ~1.1B parameters with the release's structure (GQA 16/4, head_dim 128, 3 sliding : 1 global).
BENCH = ModelConfig(
    vocab_size=128256, dim=2048, n_layers=16, n_heads=16, n_kv_heads=4, head_dim=128, ffn_dim=7168,
    max_seq_len=16384, sliding_window=1024, rope_theta=1e6, rope_factor=16.0,
    rope_original_max_seq_len=8192, bos_token_id=128000, eos_token_ids=(128001, 128008, 128009),
)


def peak_flops() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def cuda_time(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def hf_model(cfg: ModelConfig, ours: Transformer, dtype):
    from transformers import CwmConfig, CwmForCausalLM

    hf = CwmForCausalLM(CwmConfig(**cfg.to_hf_dict(), attn_implementation="sdpa")).to("cuda", dtype)
    hf.load_state_dict(to_hf_state_dict(ours))
    return hf.eval()


def check_equality() -> dict:
    """Logits of ours and of transformers on the same weights, on CUDA: float32 and bf16."""
    cfg = dataclasses.replace(BENCH, vocab_size=4096, dim=256, n_layers=6, n_heads=8, n_kv_heads=2,
                              head_dim=32, ffn_dim=512, sliding_window=64,
                              bos_token_id=1, eos_token_ids=(2,))
    out = {}
    torch.backends.cuda.matmul.allow_tf32 = False  # true float32 for the float32 comparison
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        ours = Transformer(cfg)
        ours.init_weights(seed=0)
        ours = ours.to("cuda", dtype).eval()
        hf = hf_model(cfg, ours, dtype)
        tokens = torch.randint(0, cfg.vocab_size, (2, 300), device="cuda")
        with torch.no_grad():
            a, b = ours(tokens).float(), hf(tokens).logits.float()
        out[str(dtype)] = {"max_abs_diff": (a - b).abs().max().item(), "logit_std": b.std().item(),
                           "argmax_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item()}
    torch.backends.cuda.matmul.allow_tf32 = True  # as training would run
    return out


def train_throughput(batch: int, seq: int, repeats: int) -> dict:
    """One optimizer step (forward, backward, AdamW) in bf16 autocast over fp32 weights."""
    tokens = torch.randint(0, BENCH.vocab_size, (batch, seq + 1), device="cuda")
    results = {}
    for name in ("ours", "transformers"):
        torch.manual_seed(0)
        ours = Transformer(BENCH)
        ours.init_weights(seed=0)
        ours = ours.to("cuda")
        model = ours if name == "ours" else hf_model(BENCH, ours, torch.float32).train()
        ours = None  # only `model` stays on the GPU
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(tokens[:, :-1])
                logits = out if name == "ours" else out.logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times = cuda_time(step, repeats)
        tps = batch * seq / statistics.median(times)
        results[name] = {"tokens_per_s": tps, "mfu": tps * BENCH.flops_per_token(seq) / peak_flops(),
                         "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
        model = opt = None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    results["train_ratio"] = results["ours"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
    return results


def generate_throughput(batch: int, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    ours = Transformer(BENCH)
    ours.init_weights(seed=0)
    ours = ours.to("cuda", torch.bfloat16).eval()
    hf = hf_model(BENCH, ours, torch.bfloat16)
    prompts = torch.randint(0, BENCH.vocab_size - 256, (batch, prompt_len), device="cuda")
    results = {}

    def run_ours():
        out = generate(ours, prompts.tolist(), new_tokens, stop_tokens=())
        assert all(len(o) == new_tokens for o in out)

    def run_hf():
        with torch.no_grad():
            out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        assert out.shape[1] == prompt_len + new_tokens

    for name, fn in (("ours", run_ours), ("transformers", run_hf)):
        times = cuda_time(fn, repeats, warmup=1)
        results[name] = {"tokens_per_s": batch * new_tokens / statistics.median(times)}
    results["generate_ratio"] = results["ours"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
    # The same greedy tokens from both (bf16 can flip near-ties late; report the agreement).
    a = generate(ours, prompts[:1].tolist(), 32, stop_tokens=())[0]
    with torch.no_grad():
        b = hf.generate(prompts[:1], do_sample=False, max_new_tokens=32, min_new_tokens=32, pad_token_id=0)[0, prompt_len:].tolist()
    results["greedy_prefix_agreement_32"] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), 32)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write all results as JSON here")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "params": BENCH.num_params(), "config": dataclasses.asdict(BENCH)}
    import transformers

    results["transformers"] = transformers.__version__
    print(json.dumps({k: results[k] for k in ("device", "torch", "transformers", "params")}), flush=True)
    results["equality"] = check_equality()
    print("equality", json.dumps(results["equality"]), flush=True)
    results["train"] = train_throughput(args.batch, args.seq, args.repeats)
    print("train", json.dumps(results["train"]), flush=True)
    results["generate_b1"] = generate_throughput(1, 512, 256, 3)
    print("generate_b1", json.dumps(results["generate_b1"]), flush=True)
    results["generate_b8"] = generate_throughput(8, 512, 128, 3)
    print("generate_b8", json.dumps(results["generate_b8"]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    print(f"train_ratio: {results['train']['train_ratio']:.3f}")
    print(f"generate_ratio: {results['generate_b1']['generate_ratio']:.3f}")


if __name__ == "__main__":
    main()
