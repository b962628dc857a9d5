"""Speed of our network against transformers' CwmForCausalLM, same config and weights, one run.

    .venv/bin/python benchmarks/model.py [--preset cwm-small] [--repeats 5] [--compile]

Training: forward + backward + loss on a [batch, seq] batch, tokens per second.
Generation: greedy decoding of `--new-tokens` after a `--prompt`-token prompt, batch 1, tokens
per second; ours is `cwm.model.generate`, theirs `CwmForCausalLM.generate` with its default cache.
`--compile` also times training with our blocks compiled, as `train.compile` runs them, and
generation with our decode step compiled (`generate(compile=True)`); theirs stays eager. It
prints the compile times and `*_ratio_compiled`; `train_ratio` and `generate_ratio` stay eager
against eager.
Prints medians, then, last, `train_ratio: X` and `generate_ratio: Y` (ours over theirs).
Also `generate_ratio_ceiling`: theirs against the matrix products of a decoded token alone (each
`Linear` of the model once, in our decode layout, as many times as tokens are decoded), i.e. the
ratio if everything else a decode step does (norms, rotary, cache, attention, dispatch) were free.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    from transformers import CwmForCausalLM

    from cwm.model import Transformer, generate, get_preset, save_pretrained
    from cwm.model.transformer import Linear

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cwm-small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both (1: steadiest on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="also time training with our blocks compiled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    dtype = getattr(torch, args.dtype)
    ours = Transformer(cfg)
    ours.init_weights(seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(ours, tmp)
        theirs = CwmForCausalLM.from_pretrained(tmp, dtype=dtype).to(args.device)
    ours = ours.to(args.device, dtype)
    print(f"config: {args.preset} ({cfg.num_params():,} params), {args.device} {args.dtype}, "
          f"torch threads {torch.get_num_threads()}, "
          f"transformers attention: {theirs.config._attn_implementation}")

    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=args.device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def train_step(model):
        loss = F.cross_entropy(model(inputs).float().flatten(0, 1), targets.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    def train_ours():
        train_step(ours)

    def train_theirs():
        loss = F.cross_entropy(theirs(inputs).logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        theirs.zero_grad(set_to_none=True)

    prompt = torch.randint(0, cfg.vocab_size - 256, (1, args.prompt), device=args.device)
    n = args.new_tokens

    def generate_ours():
        return generate(ours, prompt[0].tolist(), n, stop_tokens=())

    linears = [mod for mod in ours.modules() if isinstance(mod, Linear)]
    layouts = [mod.weight.t().contiguous() for mod in linears]  # as decode_layout gives them
    rows = [torch.randn(1, w.shape[0], device=args.device, dtype=dtype) for w in layouts]

    def matmuls_only():
        with torch.inference_mode():
            for _ in range(n):
                for x, w in zip(rows, layouts):
                    torch.mm(x, w)

    def generate_theirs():
        with torch.inference_mode():
            out = theirs.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, args.prompt :].tolist()

    same = generate_ours() == generate_theirs()
    print(f"greedy tokens identical: {same}")
    train_tokens = args.batch * args.seq
    results = {}
    cases = [
        ("train ours", train_ours, train_tokens),
        ("train theirs", train_theirs, train_tokens),
        ("generate ours", generate_ours, n),
        ("generate theirs", generate_theirs, n),
        ("matmuls only", matmuls_only, n),
    ]
    if args.compile:  # a copy, so that generation keeps the eager model
        compiled = copy.deepcopy(ours)
        for block in compiled.layers:
            block.compile()
        compile_time = timed(lambda: train_step(compiled), args.device)
        print(f"compile: first compiled training step took {compile_time:.1f} s")
        cases.insert(1, ("train ours comp.", lambda: train_step(compiled), train_tokens))
        compile_time = timed(lambda: generate(ours, prompt[0].tolist(), n, stop_tokens=(), compile=True), args.device)
        print(f"compile: first compiled generation took {compile_time:.1f} s")
        cases.append(("generate ours comp.", lambda: generate(ours, prompt[0].tolist(), n, stop_tokens=(), compile=True), n))
    for name, fn, _ in cases:
        fn()  # warm-up
        results[name] = []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        for name, fn, count in cases:
            results[name].append(count / timed(fn, args.device))
    medians = {name: statistics.median(v) for name, v in results.items()}
    for name, value in medians.items():
        print(f"{name:16s} {value:10.1f} tokens/s (median of {args.repeats})")
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    if args.compile:
        print(f"train_ratio_compiled: {medians['train ours comp.'] / medians['train theirs']:.2f}")
        print(f"generate_ratio_compiled: {medians['generate ours comp.'] / medians['generate theirs']:.2f}")
    print(f"generate_ratio_ceiling: {medians['matmuls only'] / medians['generate theirs']:.2f} "
          f"({len(linears)} matrix products a token: {1000 / medians['matmuls only']:.2f} ms of our "
          f"{1000 / medians['generate ours']:.2f} ms a token)")
    print(f"train_ratio: {medians['train ours'] / medians['train theirs']:.2f}")
    print(f"generate_ratio: {medians['generate ours'] / medians['generate theirs']:.2f}")


if __name__ == "__main__":
    main()
