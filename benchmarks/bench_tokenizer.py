"""Tokenizer speed: cwm.tokenizer against the libraries people would otherwise call directly.

Same tokenizer files, same texts (Python standard library sources), in one run:
  - encode / decode through our tokenizer.json path vs transformers' PreTrainedTokenizerFast
    (AutoTokenizer) on the very same directory;
  - encode / decode through our tokenizer.model path vs a bare tiktoken.Encoding on the same ranks.
Prints the median of several repeats per case; the last lines are the ratios (ours / peer;
below 1 means ours is faster).

    .venv/bin/python benchmarks/bench_tokenizer.py [--repeats 5] [--mb 2]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mb", type=float, default=2.0, help="megabytes of source text to encode")
    args = parser.parse_args()

    import tiktoken
    from transformers import AutoTokenizer

    from cwm.tokenizer import load_tokenizer, train_bpe
    from cwm.tokenizer.tokenizer import LLAMA3_PATTERN

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for f in sorted(stdlib.glob("*.py")):
        if size > args.mb * 1e6:
            break
        texts.append(f.read_text(encoding="utf-8", errors="replace"))
        size += len(texts[-1].encode())
    work = tempfile.mkdtemp(prefix="bench_tok_")
    ours_hf = train_bpe([stdlib / "email", stdlib / "asyncio", stdlib / "json"], vocab_size=4096, out_dir=work)
    peer_hf = AutoTokenizer.from_pretrained(work)

    # The same vocabulary as a tiktoken file (rank = id; byte-level characters back to bytes).
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = ours_hf._backend.data["model"]["vocab"]
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in vocab.items()}
    tik_dir = Path(work) / "tiktoken"
    tik_dir.mkdir()
    (tik_dir / "tokenizer.model").write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items()))
    ours_tik = load_tokenizer(tik_dir)
    peer_tik = tiktoken.Encoding("peer", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks, special_tokens={})

    ids_hf = [ours_hf.encode(t) for t in texts]
    ids_tik = [ours_tik.encode(t) for t in texts]
    assert ids_hf == [peer_hf(t, add_special_tokens=False)["input_ids"] for t in texts], "encodings differ"
    assert ids_tik == [peer_tik.encode_ordinary(t) for t in texts], "encodings differ"
    cases = {
        "encode tokenizer.json": (
            lambda: [ours_hf.encode(t) for t in texts],
            lambda: [peer_hf(t, add_special_tokens=False)["input_ids"] for t in texts], "transformers"),
        "decode tokenizer.json": (
            lambda: [ours_hf.decode(i) for i in ids_hf],
            lambda: [peer_hf.decode(i) for i in ids_hf], "transformers"),
        "encode tokenizer.model": (
            lambda: [ours_tik.encode(t) for t in texts],
            lambda: [peer_tik.encode_ordinary(t) for t in texts], "tiktoken"),
        "decode tokenizer.model": (
            lambda: [ours_tik.decode(i) for i in ids_tik],
            lambda: [peer_tik.decode(i) for i in ids_tik], "tiktoken"),
    }
    print(f"{len(texts)} files, {size / 1e6:.2f} MB, {sum(map(len, ids_hf))} tokens; median of {args.repeats}")
    ratios = []
    for name, (ours, peer, peer_name) in cases.items():
        a, b = median_seconds(ours, args.repeats), median_seconds(peer, args.repeats)
        print(f"{name:24s} ours {a * 1e3:8.1f} ms   {peer_name:12s} {b * 1e3:8.1f} ms")
        ratios.append(f"{name} ours/{peer_name} = {a / b:.2f}")
    print("\n".join(ratios))


if __name__ == "__main__":
    main()
