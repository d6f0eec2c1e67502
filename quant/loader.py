"""Fill a model built on the meta device tensor by tensor, quantizing and placing as it goes.

Nothing here holds more than one source tensor at a time: each float weight of a layer
to quantize is quantized (on ``quantize_device``) as soon as it arrives and only its
quantized tensors are kept; every other tensor is cast to the float dtype; each result
goes straight to where the device map puts its module (a device, or the disk offload).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .config import QuantConfig
from .linear import quantize_weight
from .offload import DiskOffload, TensorRef


def set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter ``name`` of ``model`` (possibly on the meta device) by ``value``, frozen.

    Raises:
        KeyError: ``model`` has no such parameter.
    """
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if attr not in module._parameters:
        raise KeyError(f"{name}: not a parameter of the model")
    module._parameters[attr] = nn.Parameter(value, requires_grad=False)


def device_for(name: str, device_map: dict[str, str]) -> str:
    """The device-map entry of the longest module prefix of ``name`` (``""`` matches all).

    Raises:
        KeyError: no entry covers ``name``.
    """
    parts = name.split(".")
    for i in range(len(parts), -1, -1):
        key = ".".join(parts[:i])
        if key in device_map:
            return device_map[key]
    raise KeyError(f"{name}: the device map has no entry for it")


@dataclass
class StreamingLoader:
    """Receives ``(parameter name, tensor)`` pairs and materializes them in ``model``.

    Attributes:
        model: built on the meta device, its layers to quantize already replaced
            (:func:`quant.linear.replace_linears`).
        device_map: module name -> ``cuda:N`` / ``cpu`` / ``disk``.
        dtype: float dtype of every tensor that is not quantized.
        quant: settings for the layers in ``quantized`` (None: nothing is quantized).
        quantized: names of the layers to quantize.
        quantize_device: where quantization runs (a GPU is much faster than the CPU).
        offload: the disk offload for ``disk`` modules.
        stored_bytes: bytes materialized so far, per device (``disk`` included).
    """

    model: nn.Module
    device_map: dict[str, str]
    dtype: torch.dtype
    quant: QuantConfig | None = None
    quantized: frozenset[str] = frozenset()
    quantize_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    offload: DiskOffload | None = None
    stored_bytes: dict[str, int] = field(default_factory=dict)

    def _store(self, name: str, value: torch.Tensor) -> None:
        dev = device_for(name, self.device_map)
        self.stored_bytes[dev] = self.stored_bytes.get(dev, 0) + value.numel() * value.element_size()
        if dev == "disk":
            if self.offload is None:
                raise ValueError(f"{name}: placed on disk but no disk offload was set up")
            self.offload.add(name, value)
            # the parameter stays on the meta device (accelerate reads it back per forward and
            # casts it to the meta parameter's dtype, so that must be the stored one)
            set_tensor(self.model, name, torch.empty(value.shape, dtype=value.dtype, device="meta"))
            return
        set_tensor(self.model, name, value.to(dev))

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """A float tensor from a checkpoint: quantized if it is the weight of a layer to
        quantize, else cast to ``dtype``; then placed."""
        layer, _, attr = name.rpartition(".")
        if self.quant is not None and layer in self.quantized and attr == "weight":
            for key, value in quantize_weight(tensor, self.quant, self.quantize_device).items():
                self._store(f"{layer}.{key}", value)
            return
        self._store(name, tensor.to(self.dtype))

    def add_stored(self, name: str, tensor: torch.Tensor) -> None:
        """A tensor kept exactly as stored (a pre-quantized layer's tensors); float tensors of
        other modules go through :meth:`add`."""
        layer = name.rpartition(".")[0]
        if layer in self.quantized or not tensor.is_floating_point():
            self._store(name, tensor)
        else:
            self.add(name, tensor)

    def add_reference(self, name: str, ref: TensorRef) -> bool:
        """Serve a ``disk`` tensor straight from its file (read by byte range at each use, cast
        to ``ref.dtype``) instead of copying it. Returns whether it did (else call :meth:`add` /
        :meth:`add_stored` with the tensor)."""
        if device_for(name, self.device_map) != "disk" or self.offload is None:
            return False
        self.offload.add_reference(name, ref)
        module_name, _, attr = name.rpartition(".")
        meta = self.model.get_submodule(module_name)._parameters[attr]
        set_tensor(self.model, name, torch.empty(meta.shape, dtype=ref.dtype, device="meta"))
        self.stored_bytes["disk"] = self.stored_bytes.get("disk", 0) + ref.end - ref.begin
        return True

    def missing(self) -> list[str]:
        """Parameters still on the meta device that are not offloaded to disk."""
        out = []
        for name, p in self.model.named_parameters():
            if p.is_meta and device_for(name, self.device_map) != "disk":
                out.append(name)
        return out
