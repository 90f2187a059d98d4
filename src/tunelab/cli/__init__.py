"""The command line: parse, call the library, print. Nothing else lives here; each group of commands
is a module of this package, registering on the one Typer app."""

from __future__ import annotations

import os
import warnings

from tunelab.cli import data, evaluating, feedback, reference, runs, serving, training, tuning, using  # noqa: F401  (they register commands)
from tunelab.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    # Quieter third-party output: their deprecation notes and loading bars are for library authors;
    # what users need to know, tunelab says itself.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|accelerate)\.")
    app(prog_name="tunelab")


if __name__ == "__main__":
    main()
