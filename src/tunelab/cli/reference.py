"""recipe-reference: the recipe's every field, type, default and description as Markdown (docs/recipe.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.common import DebugOption, app, console, friendly_errors


@app.command("recipe-reference")
@friendly_errors
def recipe_reference_command(
    out_path: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Write the Markdown to this file (e.g. docs/recipe.md) instead of printing it."
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Print the recipe reference: every field with its type, default and description, per section."""
    from tunelab.config.reference import recipe_reference

    text = recipe_reference()
    if out_path is None:
        sys.stdout.write(text)  # plain text: rich would read [brackets] in descriptions as markup
        return
    out_path.write_text(text, encoding="utf-8", newline="\n")
    console.print(f"wrote {out_path}")
