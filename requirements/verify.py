"""Check that this Python environment holds exactly what a lock file says: `make install` runs it last.

    python requirements/verify.py LOCK [--allow OTHER_LOCK ...] [--torch VERSION]

Every package in LOCK must be installed at its locked version. Any other installed package is an
error too, unless an --allow lock lists it (the bench extras beside the dev lock). torch is installed
outside the lock (its build depends on the machine: CPU here, a CUDA build on a GPU box), so only its
version is checked, ignoring the local build label (2.13.0+cpu is 2.13.0). Exit 1 with every mismatch.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

# Installed beside the lock on purpose: the project itself, pip (the venv's own), and torch (above)
# with, for a CUDA build, the CUDA runtime packages it brings.
NOT_LOCKED = {"tunelab", "pip", "torch", "triton"}
TORCH_RUNTIME_PREFIXES = ("nvidia-", "cuda-")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def normalise(name: str) -> str:
    """PEP 503: case, runs of -_. are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """The pins that apply to this interpreter: a universal lock forks some by environment marker."""
    from packaging.markers import Marker  # a dependency of transformers, so in every tunelab venv

    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match and (match.group(3) is None or Marker(match.group(3)).evaluate()):
            pins[normalise(match.group(1))] = match.group(2)
    if not pins:
        raise SystemExit(f"{path}: no `name==version` lines; is this a lock file?")
    return pins


def installed() -> dict[str, str]:
    return {normalise(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def problems(lock: dict[str, str], allowed: dict[str, str], have: dict[str, str], torch: str | None) -> list[str]:
    found = []
    for name, version in sorted(lock.items()):
        if name not in have:
            found.append(f"{name}=={version} is locked but not installed")
        elif have[name] != version:
            found.append(f"{name} is {have[name]}, the lock says {version}")
    for name, version in sorted(have.items()):
        if name in lock or name in NOT_LOCKED or name.startswith(TORCH_RUNTIME_PREFIXES):
            continue
        if name not in allowed:
            found.append(f"{name}=={version} is installed but not in the lock")
        elif allowed[name] != version:
            found.append(f"{name} is {version}, the lock says {allowed[name]}")
    if torch is not None and have.get("torch", "").split("+")[0] != torch:
        found.append(f"torch is {have.get('torch', 'not installed')}, the Makefile pins {torch}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--allow", type=Path, action="append", default=[])
    parser.add_argument("--torch", default=None, help="the torch version the Makefile installs")
    args = parser.parse_args(argv)
    allowed: dict[str, str] = {}
    for path in args.allow:
        if path.is_file():
            allowed.update(read_lock(path))
    found = problems(read_lock(args.lock), allowed, installed(), args.torch)
    for line in found:
        print(f"{args.lock}: {line}", file=sys.stderr)
    if found:
        print("this environment does not match the lock: `make clean install` rebuilds it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
