"""What memory a machine has: RAM from psutil, GPU memory from ``torch.cuda.mem_get_info``.

Sizes are bytes everywhere. This is the one home of sizes as users write and read them:
:func:`parse_size` reads ``6GiB`` or ``8GB`` (accelerate's units: ``GiB`` = 2**30, ``GB`` =
10**9; a bare number is bytes) and :func:`fmt_bytes` prints binary units as memory tools do.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

GiB = 2**30
MiB = 2**20


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_UNIT_BYTES = {"b": 1, **{f"{p}b": 1000 ** (i + 1) for i, p in enumerate("kmgt")},
               **{f"{p}ib": 1024 ** (i + 1) for i, p in enumerate("kmgt")}}


def parse_size(text: str | int) -> int:
    """A size as users write it -> bytes: ``"6GiB"`` -> 6442450944, ``"8GB"`` / ``"8 gb"`` ->
    8000000000, ``"1.5MiB"`` -> 1572864, ``"1234"`` / ``1234`` -> 1234.

    The units are accelerate's (``max_memory={0: "10GiB"}``): ``KiB`` / ``MiB`` / ``GiB`` /
    ``TiB`` are powers of 1024, ``KB`` / ``MB`` / ``GB`` / ``TB`` powers of 1000, ``B`` bytes;
    a bare number is bytes; case and spaces do not matter. Written here rather than with
    accelerate's ``convert_file_size_to_int`` because that one reads ``8gb`` as gigabits and
    refuses a bare number given as text.

    Raises:
        ValueError: text that is not a size, naming it and the accepted forms.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"size {text}: must be >= 0")
        return text
    m = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"size {text!r}: expected a number of bytes or e.g. 6GiB, 500MiB, 8GB")
    value = float(m.group(1)) * _UNIT_BYTES[(m.group(2) or "b").lower()]
    if not math.isfinite(value):  # 400 digits: an int() of it would be an OverflowError
        raise ValueError(f"size {text!r}: too large")
    return int(value)


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, as memory tools print them (``B`` to ``TiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass(frozen=True)
class GpuMemory:
    """One CUDA device: ``index``, ``name``, ``total`` and ``free`` bytes; ``simulated`` when
    the figures were given by the user rather than read from the device."""

    index: int
    name: str
    total: int
    free: int
    simulated: bool = False

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"


@dataclass(frozen=True)
class MachineMemory:
    """RAM (``ram_total``, ``ram_available`` bytes, psutil's meaning) and the CUDA devices."""

    ram_total: int
    ram_available: int
    gpus: tuple[GpuMemory, ...] = ()

    def with_simulated_gpu(self, total: int, free: int | None = None, name: str = "simulated GPU") -> MachineMemory:
        """This machine with its GPUs replaced by one simulated device (planning without a GPU)."""
        return replace(self, gpus=(GpuMemory(0, name, total, total if free is None else free, simulated=True),))

    def without_gpus(self) -> MachineMemory:
        return replace(self, gpus=())


def probe_memory() -> MachineMemory:
    """Read this machine's memory now: psutil for RAM, ``torch.cuda.mem_get_info`` per GPU
    (initialises CUDA when a GPU is present)."""
    import psutil
    import torch

    vm = psutil.virtual_memory()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(GpuMemory(i, torch.cuda.get_device_name(i), int(total), int(free)))
    return MachineMemory(int(vm.total), int(vm.available), tuple(gpus))


def release_free_memory() -> None:
    """Hand memory that the C allocator holds but no longer uses back to the OS (glibc's
    ``malloc_trim(0)``), so that a process's resident size after loading is what it keeps;
    a no-op where glibc is not the C library."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
