"""Offload through accelerate: a disk offload folder filled tensor by tensor, and dispatch.

accelerate's big-model inference does the work (``dispatch_model``: ``AlignDevicesHook`` s
that move each offloaded layer's weights from CPU RAM or disk to the execution device
before its forward and drop them after). This module only

- writes offloaded tensors into an accelerate offload folder one at a time
  (``offload_weight`` + ``index.json``) while a model streams in, or points accelerate
  at a tensor in its original safetensors file when it is stored there as needed (no copy);
- calls ``dispatch_model`` with one execution device, the way a device map
  ``{module: "cuda:0" | "cpu" | "disk"}`` means.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path

import torch
import torch.nn as nn


class DiskOffload:
    """An accelerate offload folder being filled, plus references into safetensors files.

    Args:
        parent: directory under which a fresh ``steerling-offload-*`` folder is made (removed
            again when the model it serves is garbage-collected or the process exits, see
            :meth:`tie_lifetime`); None when only references will be added.
    """

    def __init__(self, parent: str | Path | None):
        self.folder: Path | None = None
        if parent is not None:
            parent = Path(parent).expanduser()
            parent.mkdir(parents=True, exist_ok=True)
            self.folder = Path(tempfile.mkdtemp(prefix="steerling-offload-", dir=parent))
        self.index: dict[str, dict] = {}
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

    def add_reference(self, name: str, file: str | Path, tensor_name: str, dtype: torch.dtype, nbytes: int) -> None:
        """Serve ``name`` from tensor ``tensor_name`` of safetensors ``file``, cast to ``dtype`` on read."""
        self.index[name] = {"safetensors_file": str(file), "weight_name": tensor_name,
                            "dtype": str(dtype).removeprefix("torch.")}
        self.nbytes += nbytes

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

    index = offload.index if offload is not None and offload.index else None
    folder = str(offload.folder) if offload is not None and offload.folder is not None else None
    # a string, not a torch.device: accelerate hands it to safetensors' safe_open, which takes str / int only
    dev = str(torch.device(execution_device))
    quiet = logging.getLogger("accelerate.big_modeling")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "some parameters are on the meta device" warning: expected here
    try:
        return dispatch_model(model, device_map=dict(device_map), main_device=dev, offload_dir=folder,
                              offload_index=index, force_hooks=True)
    finally:
        quiet.setLevel(level)
