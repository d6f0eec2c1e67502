"""What memory a machine has: RAM from psutil, GPU memory from ``torch.cuda.mem_get_info``.

Sizes are bytes everywhere; :func:`parse_size` reads user input such as ``6GiB`` or
``8GB`` (accelerate's rules: ``GiB`` = 2**30, ``GB`` = 10**9) and :func:`format_size`
prints binary units as memory tools do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

GiB = 2**30
MiB = 2**20


def parse_size(text: str | int) -> int:
    """``"6GiB"`` -> 6442450944, ``"8GB"`` -> 8000000000, ``1234`` -> 1234 (accelerate's
    ``convert_file_size_to_int``).

    Raises:
        ValueError: text that is not a size, naming it and the accepted forms.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size {text}: must be >= 0")
        return text
    from accelerate.utils import convert_file_size_to_int

    try:
        value = convert_file_size_to_int(text.strip())
    except (ValueError, AttributeError):
        value = None
    if value is None or value < 0:
        raise ValueError(f"size {text!r}: expected a number of bytes or e.g. 6GiB, 500MiB, 8GB")
    return int(value)


def format_size(n: float) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units)."""
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
