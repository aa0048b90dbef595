"""Corpora, the language model and its framework-free training loop."""
