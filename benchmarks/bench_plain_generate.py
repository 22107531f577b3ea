"""Plain-generate reference: energy per output, prefill and decode token without llem.

An independent check of the harness's figures (no llenergymeasure import): a bare
``transformers`` ``generate`` on Llama-3.1-8B with random weights built on the GPU, fixed
lengths (``min_new_tokens = max_new_tokens``), the NVML total-energy counter read at the window
edges after ``torch.cuda.synchronize()``. Two windows per batch size, alternating:

* full: ``n_prompts`` prompts of ``input_len`` tokens, ``output_len`` new tokens each;
* prefill-only: the same shapes, ``max_new_tokens = 1`` (its one token is the prefill's logits).

Decode energy is the difference; per token: prefill J / prompt tokens, decode J /
(output tokens - prompts). This is the "prefill_pass_difference" method, done by hand.

Example:
    python benchmarks/bench_plain_generate.py --batch 64 --n-prompts 512 --json $OUT/ref.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from bench_harness_overhead import build_model


def _energy_j(handle: Any) -> float:
    import pynvml

    return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)) / 1000.0


def window(
    model: Any, handle: Any, prompts: list[list[int]], batch: int, new: int
) -> dict[str, float]:
    """Generate for every prompt in batches; counter energy and time over the whole window."""
    import torch

    torch.cuda.synchronize()
    e0, t0 = _energy_j(handle), time.perf_counter()
    produced = 0
    for i in range(0, len(prompts), batch):
        ids = torch.tensor(prompts[i : i + batch], device="cuda")
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        )
        produced += (out.shape[1] - ids.shape[1]) * ids.shape[0]
    torch.cuda.synchronize()
    e1, t1 = _energy_j(handle), time.perf_counter()
    return {"energy_j": e1 - e0, "duration_s": t1 - t0, "output_tokens": float(produced)}


def main(argv: list[str] | None = None) -> int:
    import pynvml
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--n-prompts", type=int, default=512)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    model = build_model("bfloat16")
    rng = random.Random(7)

    def prompts() -> list[list[int]]:
        return [
            [rng.randrange(100, 128000) for _ in range(args.input_len)]
            for _ in range(args.n_prompts)
        ]

    rows = []
    for batch in args.batch:
        window(model, handle, prompts()[:batch], batch, args.output_len)  # warm-up
        for r in range(args.rounds):
            full = window(model, handle, prompts(), batch, args.output_len)
            pre = window(model, handle, prompts(), batch, 1)
            n = args.n_prompts
            decode_j = full["energy_j"] - pre["energy_j"]
            row = {
                "batch": batch,
                "round": r + 1,
                "n_prompts": n,
                "full_energy_j": full["energy_j"],
                "full_duration_s": full["duration_s"],
                "output_tokens": full["output_tokens"],
                "output_tokens_per_s": full["output_tokens"] / full["duration_s"],
                "j_per_output_token": full["energy_j"] / full["output_tokens"],
                "prefill_energy_j": pre["energy_j"],
                "prefill_duration_s": pre["duration_s"],
                "j_per_prefill_token": pre["energy_j"] / (n * args.input_len),
                "decode_energy_j": decode_j,
                "j_per_decode_token": decode_j / (full["output_tokens"] - n),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0),
        "input_len": args.input_len,
        "output_len": args.output_len,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
    pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
