"""Label maps for classification: label name -> class id, and held-out labels checked against it."""

from __future__ import annotations

from tunelab.data.records import Labeled
from tunelab.errors import DataError

MAX_LISTED = 20


def build_label_map(records: list[Labeled]) -> dict[str, int]:
    """Label name -> id. Integer-like labels keep numeric order (0, 1, 2, ...), others sort by name."""
    names = {r.label for r in records}
    ordered = sorted(names, key=int) if all(_is_int(n) for n in names) else sorted(names)
    return {name: i for i, name in enumerate(ordered)}


def check_labels_known(records: list[Labeled], label_map: dict[str, int], split: str) -> None:
    unknown = [r for r in records if r.label not in label_map]
    if unknown:
        problems = [f"{r.source}: label {r.label!r} does not occur in the training data" for r in unknown]
        raise DataError(
            f"{split}: {len(unknown)} row(s) have labels the model cannot learn",
            problems=problems[:MAX_LISTED],
            fix=f"use only the training labels: {', '.join(label_map)}",
        )


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def missing_classes_warning(records: list[Labeled], label_map: dict[str, int], split: str) -> str | None:
    """A held-out split without some training classes still scores, but its numbers say less than they
    seem: accuracy on one class can be high while macro-F1 (averaged over every class, absent ones at 0)
    is low. Named, so a reader of 0.82 beside 0.45 knows why."""
    present = {r.label for r in records}
    missing = [name for name in label_map if name not in present]
    if not missing:
        return None
    shown = ", ".join(repr(name) for name in missing[:MAX_LISTED])
    return (
        f"{split}: {len(missing)} of the {len(label_map)} training classes never occur ({shown}); its "
        f"accuracy only measures the {len(label_map) - len(missing)} that do, and macro-F1 counts the "
        "missing ones as 0. Hold out rows of every class (data.split, which holds rows out of train, "
        "stratifies by label)"
    )
