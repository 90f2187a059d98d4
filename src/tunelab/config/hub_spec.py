"""The form of a Hugging Face Hub dataset named in a recipe: `hf:org/name[@revision][:split]`.

The recipe checks the form when it is validated (data_section.py); the data stage fetches the files at
load time (data/hub.py). Both read it here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tunelab.errors import DataError

PREFIX = "hf:"
SPEC = re.compile(r"^hf:(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[\w./-]+?))?(?::(?P<split>[\w-]+))?$")


@dataclass(frozen=True)
class HubSpec:
    repo: str
    revision: str | None
    split: str


def is_hub_spec(value: str) -> bool:
    return value.startswith(PREFIX)


def parse_spec(value: str, default_split: str = "train") -> HubSpec:
    match = SPEC.match(value)
    if match is None:
        raise DataError(
            f"{value!r} is not a Hub dataset id",
            fix="write hf:org/name, hf:org/name:test or hf:org/name@revision",
        )
    return HubSpec(match["repo"], match["revision"], match["split"] or default_split)
