"""The model: the block-causal transformer, its KV cache and the concept heads (all concept-space math)."""
