"""Interpretation: concept attribution and its records, chunks, input attribution, embeddings, the concept label catalog."""
