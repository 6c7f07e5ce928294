"""GGUF writing: the skeleton (writer.py) and one module per architecture (llama.py)."""

from meshtune.export.gguf import llama  # noqa: F401 (registers the llama architecture)
from meshtune.export.gguf.writer import (
    LLAMA_CPP_QUANTS,
    QUANTS,
    WRITER_QUANTS,
    architecture,
    supported,
    write_gguf,
)

__all__ = [
    "LLAMA_CPP_QUANTS",
    "QUANTS",
    "WRITER_QUANTS",
    "architecture",
    "supported",
    "write_gguf",
]
