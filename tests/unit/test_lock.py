"""Locked installs: the venv the tests run in holds exactly requirements/lock.txt, and the check that
says so catches a drifted, missing or extra package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

VERIFY = REPO / "requirements" / "verify.py"
LOCK = REPO / "requirements" / "lock.txt"
BENCH_LOCK = REPO / "requirements" / "bench-lock.txt"
MODELS = REPO / "requirements" / "models.txt"  # model packages, installed beside the lock
TORCH_VERSION = "2.13.0"  # the Makefile's TORCH_VERSION


def verify(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(VERIFY), *args], capture_output=True, text=True, check=False, env=env
    )


def import_verify() -> ModuleType:
    sys.path.insert(0, str(VERIFY.parent))
    try:
        import verify as module
    finally:
        sys.path.pop(0)
    return module


def torch_is_cpu_build() -> bool:
    import torch

    return torch.version.cuda is None


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (REPO / ".venv").resolve(),
    reason="runs in the venv `make install` builds from the lock; this interpreter is another one",
)
def test_the_make_install_venv_matches_the_lock() -> None:
    result = verify(str(LOCK), "--allow", str(BENCH_LOCK), "--allow", str(MODELS), "--torch", TORCH_VERSION)
    assert result.returncode == 0, result.stderr


def test_the_makefile_pins_the_torch_the_test_checks() -> None:
    assert f"TORCH_VERSION := {TORCH_VERSION}\n" in (REPO / "Makefile").read_text(encoding="utf-8")


def test_the_bench_lock_agrees_with_the_dev_lock_on_every_shared_package() -> None:
    read_lock = import_verify().read_lock
    dev, bench = read_lock(LOCK), read_lock(BENCH_LOCK)
    assert dev.items() <= bench.items()
    assert {"transformers", "peft", "accelerate", "safetensors", "pydantic"} <= dev.keys()
    assert "torch" not in dev  # installed by the Makefile's pinned step, per machine


def test_a_drifted_missing_or_extra_package_is_named(tmp_path: Path) -> None:
    import pytest as installed_pytest

    lock = tmp_path / "lock.txt"
    lock.write_text(
        f"pytest=={installed_pytest.__version__}.post99 \\\n    --hash=sha256:00\n"
        "not-a-real-package-xyz==1.0 \\\n    --hash=sha256:00\n"
        "numpy==0.0.1 ; python_full_version < '3.0' \\\n    --hash=sha256:00\n",  # another Python's fork
        encoding="utf-8",
    )
    result = verify(str(lock), "--torch", "0.0.0")
    assert result.returncode == 1
    assert f"pytest is {installed_pytest.__version__}, the lock says" in result.stderr
    assert "not-a-real-package-xyz==1.0 is locked but not installed" in result.stderr
    assert "is installed but not in the lock" in result.stderr  # numpy and the rest of the venv
    assert "numpy is" not in result.stderr  # the fork for Python < 3 does not apply here
    assert "the Makefile pins 0.0.0" in result.stderr
    assert "`make clean install` rebuilds it" in result.stderr


@pytest.mark.parametrize("lock", [LOCK, BENCH_LOCK], ids=["lock", "bench-lock"])
def test_no_lock_pins_torch_or_the_cuda_stack(lock: Path) -> None:
    # Every pin, whatever its marker: the locks are resolved against the CPU torch, whose metadata names
    # no CUDA package; a CUDA torch resolved by mistake pulls triton and the nvidia-* wheels (6.5 GB).
    pinned = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock.read_text(encoding="utf-8"), re.MULTILINE)
    cuda = [name for name in pinned if name == "triton" or name.startswith(("nvidia-", "cuda-"))]
    assert cuda == []
    assert "torch" not in pinned
    assert {"transformers", "peft"} <= set(pinned)  # the pattern reads the file


def test_a_cuda_package_is_refused_beside_a_cpu_torch_and_allowed_beside_a_cuda_one() -> None:
    problems = import_verify().problems
    cuda_stack = {"nvidia-cublas": "13.4.1.3", "cuda-toolkit": "13.2.2", "triton": "3.9.0"}
    lock = {"numpy": "2.4.6"}
    allowed = {"nvidia-cublas": "13.4.1.3"}  # a lock that pins one (the bench lock did) does not excuse it
    cpu = problems(lock, allowed, {**lock, **cuda_stack, "torch": "2.13.0+cpu"}, "2.13.0", cpu_torch=True)
    assert cpu == [
        "cuda-toolkit==13.2.2 is a CUDA package beside torch 2.13.0+cpu, a CPU build",
        "nvidia-cublas==13.4.1.3 is a CUDA package beside torch 2.13.0+cpu, a CPU build",
        "triton==3.9.0 is a CUDA package beside torch 2.13.0+cpu, a CPU build",
    ]
    assert problems(lock, allowed, {**lock, **cuda_stack, "torch": "2.13.0"}, "2.13.0", cpu_torch=False) == []


@pytest.mark.parametrize(
    ("version", "version_py", "cpu"),
    [
        ("2.13.0+cpu", None, True),  # PyTorch's CPU wheel, whatever its files say
        ("2.13.0", "cuda: Optional[str] = None\nhip: Optional[str] = None\n", True),  # a build without CUDA
        ("2.15.0", "cuda: Optional[str] = '13.0'\n", False),  # PyPI's Linux wheel
        ("2.13.0+cu130", "cuda = '13.0'\n", False),
        ("2.15.0", None, False),  # nothing says: CUDA packages stay allowed, as before
    ],
)
def test_a_cpu_build_of_torch_is_told_by_its_label_or_its_version_file(
    version: str, version_py: str | None, cpu: bool
) -> None:
    assert import_verify().is_cpu_build(version, version_py) is cpu


@pytest.mark.skipif(not torch_is_cpu_build(), reason="this venv's torch is a CUDA build, which needs them")
def test_verify_names_a_cuda_package_installed_beside_this_venvs_cpu_torch(tmp_path: Path) -> None:
    import torch

    # A package "installed" on PYTHONPATH: importlib.metadata finds its dist-info like any other.
    dist_info = tmp_path / "nvidia_cublas-13.4.1.3.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: nvidia-cublas\nVersion: 13.4.1.3\n", encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = verify(str(LOCK), "--allow", str(BENCH_LOCK), "--allow", str(MODELS), env=env)
    assert result.returncode == 1
    assert (
        f"nvidia-cublas==13.4.1.3 is a CUDA package beside torch {torch.__version__}, a CPU build"
        in result.stderr
    )
