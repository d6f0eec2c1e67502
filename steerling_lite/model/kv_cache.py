"""KV cache of fully committed attention blocks.

Steerling's attention is block-causal over a fixed grid of blocks of B =
``diff_block_size`` positions: a query in attention block a sees every key in blocks
``<= a``. Once every position of blocks ``0..a`` holds its final token, the keys and
values of those blocks can never change again (nothing they attend to changes), so
they are computed once and kept, as in Block Diffusion (BD3-LM) and Fast-dLLM.

The cache is a static, preallocated pair of buffers per layer, like gpt-fast's:
``(batch, n_kv_heads, max_len, head_dim)``. ``length`` counts the committed prefix
(always a multiple of B); slots after it hold the keys/values of the window last
forwarded and are overwritten by the next forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class KVCache:
    """Per-layer key/value buffers for positions ``[0, max_len)``.

    Attributes:
        keys, values: one ``(batch, n_kv_heads, max_len, head_dim)`` tensor per layer.
        length: tokens of the committed prefix whose keys/values are final.
    """

    keys: list[Tensor]
    values: list[Tensor]
    length: int = 0
    block: int = field(default=1)

    @classmethod
    def allocate(
        cls, devices: Sequence[torch.device | str], batch: int, n_kv_heads: int, max_len: int, head_dim: int,
        block: int, dtype: torch.dtype,
    ) -> KVCache:
        """Zeroed buffers for ``max_len`` tokens, layer i's on ``devices[i]`` (the device its block
        computes on, so that offload hooks never copy the cache): ``2 * batch * n_kv_heads *
        max_len * head_dim`` elements of ``dtype`` per layer."""
        shape = (batch, n_kv_heads, max_len, head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        values = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        return cls(keys, values, 0, block)

    @staticmethod
    def bytes_needed(n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype_bytes: int) -> int:
        """Bytes :meth:`allocate` takes for these dimensions."""
        return 2 * n_layers * batch * n_kv_heads * max_len * head_dim * dtype_bytes

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        return self.keys[i], self.values[i]

    def commit(self, length: int) -> None:
        """Mark positions ``[0, length)`` final; ``length`` must be a multiple of the block size
        and cover only positions a forward has already written."""
        if length % self.block:
            raise ValueError(f"cache length {length} is not a multiple of the attention block {self.block}")
        self.length = max(self.length, length)
