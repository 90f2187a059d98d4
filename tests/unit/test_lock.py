"""Locked installs: the venv the tests run in holds exactly requirements/lock.txt, and the check that
says so catches a drifted, missing or extra package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

VERIFY = REPO / "requirements" / "verify.py"
LOCK = REPO / "requirements" / "lock.txt"
BENCH_LOCK = REPO / "requirements" / "bench-lock.txt"
MODELS = REPO / "requirements" / "models.txt"  # model packages, installed beside the lock
TORCH_VERSION = "2.13.0"  # the Makefile's TORCH_VERSION


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(VERIFY), *args], capture_output=True, text=True, check=False)


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
    sys.path.insert(0, str(VERIFY.parent))
    try:
        from verify import read_lock  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
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
