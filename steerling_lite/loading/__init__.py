"""Loading and planning: config, checkpoint files, tokenizer, the memory plan, quantized and pre-quantized loading, the embedded default model."""
