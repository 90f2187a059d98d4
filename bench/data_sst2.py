"""Benchmark: `data inspect` (load, lengths, exact + near dedup, PII) over all 67,349 SST-2 train rows.

    .venv/bin/python bench/data_sst2.py [--repeat 3]

Target (issue 3): under 60 s on the 2-core CI machine. Results go in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tunelab.data.clean import NearDupConfig, exact_duplicates, near_duplicates
from tunelab.data.formats import Columns, load_split
from tunelab.data.inspect import inspect_file
from tunelab.data.records import record_text

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2" / "train.tsv"


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    columns = Columns(text="sentence")
    runs = []
    for _ in range(args.repeat):
        split, t_load = timed(load_split, SST2, columns=columns)
        texts = [record_text(r) for r in split.records]
        exact, t_exact = timed(exact_duplicates, texts)
        near, t_near = timed(near_duplicates, texts, NearDupConfig())
        summary, t_inspect = timed(inspect_file, SST2, columns=columns)
        runs.append({"load_s": t_load, "exact_s": t_exact, "near_s": t_near, "inspect_total_s": t_inspect})
    best = {k: round(min(r[k] for r in runs), 2) for k in runs[0]}
    print(json.dumps({
        "rows": len(texts), "cores": os.cpu_count(), "best_of": args.repeat, **best,
        "exact_duplicates": sum(d is not None for d in exact), "near_duplicates": sum(d is not None for d in near),
        "pii": summary["pii"],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
