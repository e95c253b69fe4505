"""Helpers every layer may use: atomic file and folder writes, JSON and safetensors reads with named errors."""

from .files import FileError, atomic_file, atomic_folder, atomic_write_text, read_json, read_safetensors

__all__ = ["FileError", "atomic_file", "atomic_folder", "atomic_write_text", "read_json", "read_safetensors"]
