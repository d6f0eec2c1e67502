"""Offload through accelerate: a disk offload folder filled tensor by tensor, and dispatch.

accelerate's big-model inference does the work (``dispatch_model``: ``AlignDevicesHook`` s
that move each offloaded layer's weights from CPU RAM or disk to the execution device
before its forward and drop them after). This module only

- writes offloaded tensors into an accelerate offload folder one at a time
  (``offload_weight`` + ``index.json``) while a model streams in, or serves a tensor from
  its original file by byte range (:class:`TensorRef`, no copy, and never a memory map of
  the whole file as accelerate's own safetensors reading would make);
- calls ``dispatch_model`` with one execution device, the way a device map
  ``{module: "cuda:0" | "cpu" | "disk"}`` means.
"""

from __future__ import annotations

import errno
import logging
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn as nn

from .stale import claim, remove_stale

FOLDER_PREFIX = "steerling-offload-"


def read_byte_range(f: BinaryIO, begin: int, end: int) -> torch.Tensor:
    """Bytes ``[begin, end)`` of the open binary file ``f`` as a new uint8 CPU tensor, read with
    ``readinto``: no memory map (a mapped file's pages count in the process's memory, and Linux
    refuses a private mapping larger than RAM + swap: "unable to mmap ... Cannot allocate memory").

    Raises:
        EOFError: the file ends before ``end``; its argument is the byte where it ends.
    """
    buf = torch.empty(end - begin, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    f.seek(begin)
    pos = 0
    while pos < len(view):
        n = f.readinto(view[pos:])
        if not n:
            raise EOFError(begin + pos)
        pos += n
    return buf


@dataclass(frozen=True)
class TensorRef:
    """A tensor stored in a file (a safetensors file's data): bytes ``[begin, end)`` of ``file``
    hold ``shape`` in ``stored`` dtype; read, it is cast to ``dtype``."""

    file: str
    begin: int
    end: int
    shape: tuple[int, ...]
    stored: torch.dtype
    dtype: torch.dtype

    def read(self) -> torch.Tensor:
        """The tensor, on the CPU, in ``dtype``.

        Raises:
            OSError: the file cannot be read, or ends before the tensor (truncated since loading).
        """
        with open(self.file, "rb", buffering=0) as f:
            try:
                data = read_byte_range(f, self.begin, self.end)
            except EOFError as exc:
                raise OSError(errno.EIO, f"the file ends at byte {exc.args[0]}, before the tensor data ending at "
                                         f"{self.end} (changed since it was loaded?)", self.file) from None
        return data.view(self.stored).reshape(self.shape).to(self.dtype)


class OffloadedTensors(Mapping):
    """What accelerate's hooks read for offloaded modules: tensors held in memory (``resident``)
    and references read from their files by byte range at each use (``refs``), instead of
    accelerate's own reading, which maps the whole safetensors file."""

    def __init__(self, refs: Mapping[str, TensorRef], resident: Mapping[str, torch.Tensor]):
        self.refs, self.resident = refs, resident

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.resident:
            return self.resident[key]
        return self.refs[key].read()

    def __iter__(self) -> Iterator[str]:
        yield from self.resident
        yield from (k for k in self.refs if k not in self.resident)

    def __len__(self) -> int:
        return len(self.resident) + sum(1 for k in self.refs if k not in self.resident)


class DiskOffload:
    """An accelerate offload folder being filled, plus references into safetensors files.

    Args:
        parent: directory under which a fresh ``steerling-offload-*`` folder is made (removed
            again when the model it serves is garbage-collected or the process exits, see
            :meth:`tie_lifetime`; one left by a killed process is removed by the next
            ``DiskOffload`` there, :mod:`quant.stale`); None when only references will be added.
    """

    def __init__(self, parent: str | Path | None):
        self.folder: Path | None = None
        if parent is not None:
            parent = Path(parent).expanduser()
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale(parent, f"{FOLDER_PREFIX}*")  # left by a process killed while it ran
            self.folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=parent))
            claim(self.folder)
        self.index: dict[str, dict] = {}  # accelerate's index of the folder's .dat files
        self.refs: dict[str, TensorRef] = {}  # tensors read in place from their checkpoint files
        self.nbytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (CPU) to ``<folder>/<name>.dat`` (accelerate's ``offload_weight``).

        Raises:
            ValueError: no folder was given.
        """
        if self.folder is None:
            raise ValueError(f"{name}: weights must be offloaded to disk but no offload directory was given")
        from accelerate.utils import offload_weight

        offload_weight(tensor.detach().cpu().contiguous(), name, str(self.folder), index=self.index)
        self.nbytes += tensor.numel() * tensor.element_size()

    def add_reference(self, name: str, ref: TensorRef) -> None:
        """Serve ``name`` from its bytes in a file (``ref``), read by byte range at each use."""
        self.refs[name] = ref
        self.nbytes += ref.end - ref.begin

    def tie_lifetime(self, owner: object) -> None:
        """Delete the folder when ``owner`` is garbage-collected (or at exit)."""
        if self.folder is not None:
            weakref.finalize(owner, shutil.rmtree, str(self.folder), True)

    def discard(self) -> None:
        """Delete the folder now (a load that failed)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def needs_dispatch(device_map: dict[str, str]) -> bool:
    """Whether hooks are needed: weights on more than one device or on disk."""
    return len(set(device_map.values())) > 1 or "disk" in device_map.values()


def dispatch(model: nn.Module, device_map: dict[str, str], execution_device: str | torch.device,
             offload: DiskOffload | None = None) -> nn.Module:
    """Attach accelerate's hooks so that every forward runs on ``execution_device``.

    Modules mapped to the execution device stay there; those mapped to ``cpu`` (with a GPU
    execution device) keep their weights in RAM, those mapped to ``disk`` in the offload
    folder or their safetensors file, and accelerate copies them in for each forward.

    Args:
        model: the model, every tensor on its device-map device (``meta`` for ``disk``).
        device_map: module name -> ``cuda:N`` / ``cpu`` / ``disk``, covering every parameter.
        execution_device: where forwards run.
        offload: the disk offload of the ``disk`` modules.

    Returns:
        the model (hooks attached; ``model.hf_device_map`` set).
    """
    from accelerate import dispatch_model
    from accelerate.utils import extract_submodules_state_dict

    index = offload.index if offload is not None and offload.index else None
    folder = str(offload.folder) if offload is not None and offload.folder is not None else None
    weights = None
    if offload is not None and offload.refs:
        # given weights, accelerate no longer collects those of CPU-offloaded modules (GPU runs): add them
        cpu = [m for m, d in device_map.items() if d == "cpu"] if torch.device(execution_device).type != "cpu" else []
        weights = OffloadedTensors(offload.refs, extract_submodules_state_dict(model.state_dict(), cpu) if cpu else {})
        index = index or {}  # not None: accelerate then asks for no folder
    # a string, not a torch.device: accelerate hands it to safetensors' safe_open, which takes str / int only
    dev = str(torch.device(execution_device))
    quiet = logging.getLogger("accelerate.big_modeling")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "some parameters are on the meta device" warning: expected here
    try:
        return dispatch_model(model, device_map=dict(device_map), main_device=dev, state_dict=weights,
                              offload_dir=folder, offload_index=index, force_hooks=True)
    finally:
        quiet.setLevel(level)
