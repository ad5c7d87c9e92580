"""Measurement helpers: memory accounting (optimizer state, saved activations, peak) and held-out loss."""

from hf_effi.utils.eval import mean_loss, perplexity
from hf_effi.utils.memory import (
    MemoryReport,
    format_bytes,
    optimizer_state_bytes,
    peak_memory,
    reachable_tensor_bytes,
    saved_activation_bytes,
    tensor_storages,
)

__all__ = [
    "MemoryReport",
    "format_bytes",
    "mean_loss",
    "optimizer_state_bytes",
    "peak_memory",
    "perplexity",
    "reachable_tensor_bytes",
    "saved_activation_bytes",
    "tensor_storages",
]
