"""Check that this Python environment holds exactly what a lock file says: `make install` runs it last.

    python requirements/verify.py LOCK [--allow OTHER_LOCK ...] [--torch VERSION]

Every package in LOCK must be installed at its locked version. Any other installed package is an
error too, unless an --allow lock lists it (the bench extras beside the dev lock). torch is installed
outside the lock (its build depends on the machine: CPU here, a CUDA build on a GPU box), so only its
version is checked, ignoring the local build label (2.13.0+cpu is 2.13.0). A CUDA build brings its CUDA
runtime packages (nvidia-*, cuda-*, triton), also outside the lock; beside a CPU build of torch they are
an error, as they are dead weight (several GB) that a lock resolved against the wrong torch pulled in.
Exit 1 with every mismatch.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

# Installed beside the lock on purpose: the project itself, pip (the venv's own), and torch (above)
# with, for a CUDA build only, the CUDA runtime packages it brings.
NOT_LOCKED = {"tunelab", "pip", "torch"}
CUDA_RUNTIME_PREFIXES = ("nvidia-", "cuda-")
CUDA_RUNTIME_NAMES = {"triton"}
# torch/version.py, written when torch is built: `cuda: Optional[str] = None` in a build without CUDA.
TORCH_CUDA_LINE = re.compile(r"^cuda\s*(?::[^=]*)?=\s*(\S+)\s*$", re.MULTILINE)
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


def is_cpu_build(torch_version: str, version_py: str | None) -> bool:
    """PyTorch's CPU wheels carry a `+cpu` label; any build without CUDA (from source, ROCm) says so in
    torch/version.py. Neither known (no label, no file): not a CPU build, so CUDA packages stay allowed."""
    if torch_version.partition("+")[2].startswith("cpu"):
        return True
    match = TORCH_CUDA_LINE.search(version_py or "")
    return match is not None and match.group(1) == "None"


def installed_torch_is_cpu_build() -> bool:
    """Read from torch's files, not by importing it: seconds saved, and a broken build cannot fail this."""
    try:
        torch = metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        return False
    version_py = Path(str(torch.locate_file("torch/version.py")))
    text = version_py.read_text(encoding="utf-8") if version_py.is_file() else None
    return is_cpu_build(torch.version, text)


def is_cuda_runtime(name: str) -> bool:
    return name in CUDA_RUNTIME_NAMES or name.startswith(CUDA_RUNTIME_PREFIXES)


def problems(
    lock: dict[str, str], allowed: dict[str, str], have: dict[str, str], torch: str | None, *, cpu_torch: bool
) -> list[str]:
    """Every difference between the venv (`have`) and the locks; `cpu_torch`: the installed torch is a
    CPU build, so a CUDA runtime package is an error even where a lock lists it."""
    found = []
    for name, version in sorted(lock.items()):
        if name not in have:
            found.append(f"{name}=={version} is locked but not installed")
        elif have[name] != version:
            found.append(f"{name} is {have[name]}, the lock says {version}")
    for name, version in sorted(have.items()):
        if is_cuda_runtime(name):
            if cpu_torch:
                found.append(
                    f"{name}=={version} is a CUDA package beside torch {have.get('torch')}, a CPU build"
                )
            continue
        if name in lock or name in NOT_LOCKED:
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
    cpu_torch = installed_torch_is_cpu_build()
    found = problems(read_lock(args.lock), allowed, installed(), args.torch, cpu_torch=cpu_torch)
    for line in found:
        print(f"{args.lock}: {line}", file=sys.stderr)
    if found:
        print("this environment does not match the lock: `make clean install` rebuilds it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
