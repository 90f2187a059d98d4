"""Measuring memory: this process's resident set and its peak, the machine's memory, and --memory sizes.

On CPU the process's baseline (Python, torch, transformers and the tokenised data: 300-500 MB before any
weights) is measured, not assumed: it is the resident set size when the model is about to be loaded.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource

from tunelab.plan.memory import MiB

# On CUDA the context and kernels take memory that torch's counters do not see; a typical figure.
CUDA_CONTEXT_BYTES = 512 * MiB


def current_rss() -> int:
    """This process's resident set size now (Linux /proc; elsewhere the peak so far, an overstatement)."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/self/statm", encoding="ascii") as f,
    ):
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return _maxrss()


def reset_peak_rss() -> None:
    """Start the resident-set high-water mark afresh (Linux: clear_refs 5), so a probe in a process that
    did other work first (a test session, a notebook) measures its own peak, not an earlier one."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def peak_rss() -> int:
    """The resident-set high-water mark: VmHWM (which reset_peak_rss resets), else getrusage's maxrss."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _maxrss()


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def machine_memory(cuda: bool) -> int:
    """What training may use: the GPU's memory on CUDA, else the RAM, or the container's limit if lower."""
    if cuda:
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError), open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
        limit = f.read().strip()
        if limit.isdigit():
            return min(ram, int(limit))
    return int(ram)


def parse_memory(text: str) -> int:
    """'24GB', '24GiB', '512M', '1.5T' -> bytes. Decimal and binary spellings both count in powers of
    1024, as GPU memory is quoted ("a 24 GB card" has 24 GiB). A bare number is refused: 24 what?"""
    from tunelab.errors import TunelabError

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT])(?:I?B)?\s*", text.upper())
    if match is None:
        raise TunelabError(
            f"--memory {text!r}: expected a size with a unit", fix="e.g. --memory 24GB, 512MB or 1.5TB"
        )
    value = float(match.group(1)) * 1024 ** ("KMGT".index(match.group(2)) + 1)
    if value <= 0:
        raise TunelabError(f"--memory {text!r}: must be more than zero")
    return int(value)
