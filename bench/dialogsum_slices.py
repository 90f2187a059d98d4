"""The DialogSum slices of the real-model results (bench/README.md, "Real results with SmolLM2"):
the first 200 dev dialogues to train on and the next 40 to test on, as issue 14 measured them.

    python bench/dialogsum_slices.py OUT_DIR    # writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl

The rows are copied as they are from ../shared/data/dialogsum/dev.jsonl (they are not kept in the
repository); the recipe maps `summary` to the answer and writes the prompt with data.prompt_template.
"""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "dialogsum" / "dev.jsonl"
TRAIN, TEST = 200, 40


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    lines = SOURCE.read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "train.jsonl").write_text("".join(lines[:TRAIN]), encoding="utf-8")
    (out / "test.jsonl").write_text("".join(lines[TRAIN : TRAIN + TEST]), encoding="utf-8")
    print(f"{out}/train.jsonl: {TRAIN} dialogues; {out}/test.jsonl: {TEST}")


if __name__ == "__main__":
    main()
