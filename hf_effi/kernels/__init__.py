"""Kernels hf_effi owns: one folder per op family, each with a plain-PyTorch reference, a chunked PyTorch path
and (on CUDA) a Triton path, dispatched on the input's device. Importing this package never imports Triton.
"""

from __future__ import annotations

from . import linear_attn

__all__ = ["linear_attn"]
