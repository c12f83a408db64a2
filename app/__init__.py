"""Loracle: one base model, a switchable LoRA adapter and switchable retrieval."""
