"""Evaluation: quantization quality and interpretability per precision (``steerling-lite eval``), and
the technical report's interpretability measures on the user's text (``steerling-lite report``)."""
