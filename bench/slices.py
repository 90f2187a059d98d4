"""The data slices of the real-model results (bench/README.md, "Real results with real models"). The
rows are copied as they are from ../shared/data (they are not kept in the repository):

    python bench/slices.py dialogsum /tmp/dialogsum   # dev 0-199 train, dev 200-239 test (issue 14's)
    python bench/slices.py multi30k /tmp/multi30k     # train 0-1999 train, test_2016_flickr 0-99 test
    python bench/slices.py hh /tmp/hh                 # pairs 0-1999 train, 2000-2099 test
    python bench/slices.py general /tmp/general       # Pride and Prejudice paragraphs as {"text"} rows

Each writes OUT_DIR/train.jsonl and OUT_DIR/test.jsonl; the recipes name them in their header.
`general` writes reference.jsonl (paragraphs 0-199: the forgetting check's general text) and
replay.jsonl (paragraphs 200 on: replay data, the same book but none of the reference's text).
"""

from __future__ import annotations

import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# name -> ((train file, first row, end row), (test file, first row, end row))
SLICES = {
    "dialogsum": (("dialogsum/dev.jsonl", 0, 200), ("dialogsum/dev.jsonl", 200, 240)),
    "multi30k": (("multi30k_en_de/train.jsonl", 0, 2000), ("multi30k_en_de/test_2016_flickr.jsonl", 0, 100)),
    "hh": (("hh_rlhf/harmless_base_test.jsonl", 0, 2000), ("hh_rlhf/harmless_base_test.jsonl", 2000, 2100)),
}


BOOK = "plain_text/pride_and_prejudice_pg1342.txt"
REFERENCE, REPLAY = (0, 200), (200, 1200)
MIN_PARAGRAPH_CHARS = 200  # chapter headings and one-line exchanges say little about general text


def paragraphs() -> list[str]:
    """The novel's paragraphs (blank-line separated, line breaks joined), after the Gutenberg header."""
    text = (SHARED / BOOK).read_text(encoding="utf-8")
    body = text.split("*** START OF", 1)[-1].split("\n", 1)[-1]
    body = body.split("*** END OF", 1)[0]
    found = [" ".join(block.split()) for block in body.replace("\r\n", "\n").split("\n\n")]
    return [p for p in found if len(p) >= MIN_PARAGRAPH_CHARS]


def general(out: Path) -> None:
    import json

    found = paragraphs()
    for name, (start, end) in (("reference", REFERENCE), ("replay", REPLAY)):
        kept = found[start:end]
        rows = "".join(json.dumps({"text": p}, ensure_ascii=False) + "\n" for p in kept)
        (out / f"{name}.jsonl").write_text(rows, encoding="utf-8")
        print(f"{out}/{name}.jsonl: {len(kept)} paragraphs from {start} of {BOOK} ({len(found)} in all)")


def main() -> None:
    names = [*SLICES, "general"]
    if len(sys.argv) != 3 or sys.argv[1] not in names:
        sys.exit(f"usage: python bench/slices.py {{{'|'.join(names)}}} OUT_DIR")
    name, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    if name == "general":
        general(out)
        return
    for split, (source, start, end) in zip(("train", "test"), SLICES[name], strict=True):
        lines = (SHARED / source).read_text(encoding="utf-8").splitlines(keepends=True)[start:end]
        (out / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")
        print(f"{out}/{split}.jsonl: {len(lines)} rows of {source} ({start}-{end - 1})")


if __name__ == "__main__":
    main()
