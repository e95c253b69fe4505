"""Checkpoint formats: safetensors folders and the Hugging Face layouts of each family."""
