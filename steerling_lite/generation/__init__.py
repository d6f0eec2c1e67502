"""Generation and steering: the denoising step, the denoising loop, sampling, steering plans, the generation trace."""
