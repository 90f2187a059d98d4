"""Peak memory and time of the plain causal-LM loss against the chunked, fused one (training/losses.py).

One forward + backward of the loss alone, from final hidden states [N, H] through a head [V, H] to the
summed cross-entropy; by default N = 8 × 256 tokens, H = 256, V = 30,522 (BERT's vocabulary). Each
variant runs in a fresh subprocess so that one's peak does not hide the other's. "extra_mb" is the peak
above what the inputs already held: on CUDA from torch.cuda.max_memory_allocated, on CPU from the
process's peak RSS (ru_maxrss, which counts every allocation the process made, so it is coarser).

    .venv/bin/python bench/losses_memory.py [--targets 0.3] [--frozen-head] [--device cuda]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

from tunelab.training.losses import DEFAULT_CHUNK_SIZE

VARIANTS = ("plain", "chunked")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=8 * 256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=30_522)
    parser.add_argument("--targets", type=float, default=1.0, help="fraction of positions that are targets")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--frozen-head", action="store_true", help="head without gradient, as with LoRA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier numbers)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs; the best is reported")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set in the subprocess
    args = parser.parse_args()
    if args.variant is not None:
        print(json.dumps(measure(args)))
        return
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    settings = {k: v for k, v in vars(args).items() if k != "variant"}
    print(json.dumps({"bench": "losses_memory", **settings, **results}))


def measure(args: Any) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from tunelab.training.losses import chunked_linear_cross_entropy

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=g).to(device).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=g) / args.hidden**0.5).to(device)
    weight.requires_grad_(not args.frozen_head)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=g)
    targets[torch.rand(args.tokens, generator=g) >= args.targets] = -100
    targets = targets.to(device)

    def step() -> None:
        if args.variant == "plain":
            logits = F.linear(hidden, weight).float()
            loss = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        else:
            loss = chunked_linear_cross_entropy(hidden, weight, None, targets, chunk_size=args.chunk_size)
        loss.backward()
        hidden.grad = weight.grad = None  # gradients are freed between runs, as an optimizer step would
        sync(device)

    before = baseline_bytes(device)
    step()  # the peak is the same on every run: measure it on the first, which also warms up
    extra_mb = (peak_bytes(device) - before) / 2**20
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"extra_mb": round(extra_mb, 1), "best_s": round(min(times), 4)}


def baseline_bytes(device: Any) -> int:
    """What is held now; on CPU the peak so far, since ru_maxrss can only be read as a high-water mark."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return int(torch.cuda.memory_allocated(device))
    return peak_bytes(device)


def peak_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
