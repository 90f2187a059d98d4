"""The data slices of the real-model results (bench/README.md, "Real results with real models"). The
rows are copied as they are from ../shared/data (they are not kept in the repository):

    python bench/slices.py dialogsum /tmp/dialogsum   # dev 0-199 train, dev 200-239 test (issue 14's)
    python bench/slices.py multi30k /tmp/multi30k     # train 0-1999 train, test_2016_flickr 0-99 test
    python bench/slices.py hh /tmp/hh                 # pairs 0-1999 train, 2000-2311 test

Each writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl; the recipes name them in their header.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# name -> ((train file, first row, end row), (test file, first row, end row))
SLICES = {
    "dialogsum": (("dialogsum/dev.jsonl", 0, 200), ("dialogsum/dev.jsonl", 200, 240)),
    "multi30k": (("multi30k_en_de/train.jsonl", 0, 2000), ("multi30k_en_de/test_2016_flickr.jsonl", 0, 100)),
    "hh": (("hh_rlhf/harmless_base_test.jsonl", 0, 2000), ("hh_rlhf/harmless_base_test.jsonl", 2000, 2312)),
}


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in SLICES:
        sys.exit(f"usage: python bench/slices.py {{{'|'.join(SLICES)}}} OUT_DIR")
    name, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for split, (source, start, end) in zip(("train", "test"), SLICES[name], strict=True):
        lines = (SHARED / source).read_text(encoding="utf-8").splitlines(keepends=True)[start:end]
        (out / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
        print(f"{out}/{split}.jsonl: {len(lines)} rows of {source} ({start}-{end - 1})")


if __name__ == "__main__":
    main()
