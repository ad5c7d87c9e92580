"""hf_effi: cheaper training and serving for Hugging Face transformers, peft and accelerate."""

from hf_effi._compat import check_versions as _check_versions

_check_versions()

from hf_effi._version import __version__  # noqa: E402

__all__ = ["__version__"]
