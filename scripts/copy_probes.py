"""Does a trained model read the program, or guess? Three probes of a checkpoint (docs/cwm-mini.md).

    .venv/bin/python scripts/copy_probes.py CHECKPOINT [--data runs/mini/data/heldout] [--traces 40]

- induction: loss on a random 100-token sequence and on its exact repeat right after it. A model
  with a copy (induction) head predicts the repeat almost for free; one without does not.
- action tokens: teacher-forced argmax accuracy on the tokens of action lines (the source line
  each frame names) of the first N complete traces of a dataset.
- context: frame loss of each trace with its own program, and with the next trace's program in
  its place; a model that reads the program loses much more when it is swapped.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F


def main() -> None:
    from cwm.data import dataset
    from cwm.data.dataset import row_to_trace
    from cwm.data.pack import trace_document
    from cwm.model import load_pretrained
    from cwm.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="runs/mini/data/heldout")
    parser.add_argument("--traces", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, tok = load_pretrained(args.checkpoint).eval(), load_tokenizer(args.checkpoint)

    def logits(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.tensor([ids]))[0]

    seq = torch.randint(0, tok.vocab_size - 256, (4, 100), generator=torch.Generator().manual_seed(0))
    pairs = torch.cat([seq, seq], 1)
    with torch.no_grad():
        loss = F.cross_entropy(model(pairs[:, :-1]).flatten(0, 1).float(), pairs[:, 1:].flatten(), reduction="none").view(4, -1)
    print(f"induction: loss {loss[:, :99].mean():.2f} on random tokens, {loss[:, 100:].mean():.2f} on their repeat")

    rows = [r for r in dataset.rows(args.data) if r["cwm_text"]][: args.traces + 1]
    right = total = 0
    own = other = 0.0
    for row, following in zip(rows, rows[1:]):
        trace = row_to_trace(row)
        ids, mask = trace_document(trace, tok)
        out = logits(ids[:-1])
        predicted = out.argmax(-1).tolist()
        inside = False
        for i in range(ids.index(tok.frame_sep_id), len(ids) - 1):
            if ids[i] == tok.action_sep_id:
                inside = True
            elif tok.is_special(ids[i]):
                inside = False
            if inside:  # the next token belongs to the action line (or ends it)
                right += predicted[i] == ids[i + 1]
                total += 1
        target, keep = torch.tensor(ids[1:]), torch.tensor(mask[1:]).bool()
        own += F.cross_entropy(out.float(), target, reduction="none")[keep].mean().item()
        swapped = copy.copy(trace)
        swapped.source = row_to_trace(following).source
        ids2, mask2 = trace_document(swapped, tok)
        target2, keep2 = torch.tensor(ids2[1:]), torch.tensor(mask2[1:]).bool()
        other += F.cross_entropy(logits(ids2[:-1]).float(), target2, reduction="none")[keep2].mean().item()
    n = len(rows) - 1
    print(f"action tokens: {right / total:.3f} right (teacher-forced argmax, {total} tokens of {n} traces)")
    print(f"context: frame loss {own / n:.3f} with the trace's own program, {other / n:.3f} with another one")


if __name__ == "__main__":
    main()
