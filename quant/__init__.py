"""Weight-only quantization (bitsandbytes), memory planning and offload (accelerate) for PyTorch models.

Generic: it is told which modules to keep unquantized and knows nothing of any model family.

- :mod:`quant.config`: :class:`QuantConfig` (int8 / nf4 / fp4 settings), the exact tensor
  layout of a quantized linear layer, and the names of float dtypes (``FLOAT_DTYPES``);
- :mod:`quant.linear`: quantized linear layers holding plain tensors, quantization,
  selecting and replacing ``nn.Linear`` layers;
- :mod:`quant.loader`: filling a meta-device model tensor by tensor (streaming load);
- :mod:`quant.planner`: device placement within a memory budget;
- :mod:`quant.memory`: reading RAM / GPU memory; sizes as users write and read them
  (:func:`parse_size`, :func:`fmt_bytes`);
- :mod:`quant.offload`: accelerate dispatch and disk offload;
- :mod:`quant.prequant`: metadata and checks of pre-quantized checkpoints.
"""

from .config import QUANT_METHODS, QuantConfig
from .linear import FourBitLinear, Int8Linear, QuantLinear, pack_for_cpu, quantize_weight, replace_linears, select_linears
from .loader import StreamingLoader, device_for, set_tensor
from .memory import GpuMemory, MachineMemory, fmt_bytes, parse_size, probe_memory
from .offload import DiskOffload, dispatch, needs_dispatch
from .planner import Budget, Candidate, Plan, Unit, Workload, choose_plan, format_plan, plan_placement
from .prequant import PrequantInfo, check_versions, library_versions, read_quantize_config

__all__ = [
    "QUANT_METHODS", "QuantConfig", "QuantLinear", "Int8Linear", "FourBitLinear", "quantize_weight",
    "select_linears", "replace_linears", "pack_for_cpu", "StreamingLoader", "device_for", "set_tensor",
    "GpuMemory", "MachineMemory", "fmt_bytes", "parse_size", "probe_memory", "DiskOffload", "dispatch",
    "needs_dispatch", "Budget", "Candidate", "Plan", "Unit", "Workload", "choose_plan", "format_plan", "plan_placement",
    "PrequantInfo", "check_versions", "library_versions", "read_quantize_config",
]
