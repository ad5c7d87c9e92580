"""hf_effi: cheaper training and serving for Hugging Face transformers, peft and accelerate.

    >>> import hf_effi
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds,
    ...                   optimizers=hf_effi.make("adamw", model, lr=1e-3, num_training_steps=1000, schedule="wsd"))
"""

from hf_effi._compat import check_versions as _check_versions

_check_versions()

from hf_effi import peft  # noqa: E402  (registers hf_effi's tuners into peft)
from hf_effi._version import __version__  # noqa: E402
from hf_effi.linear import linearize  # noqa: E402
from hf_effi.optim import make, make_cls_and_kwargs, make_optimizer  # noqa: E402
from hf_effi.registry import families as _families  # noqa: E402
from hf_effi.schedules import make_scheduler  # noqa: E402


def available() -> dict[str, dict[str, str]]:
    """Every registered method by family: ``{"optimizers": {name: description}, "schedules": {...}, ...}``."""
    return {family: registry.describe() for family, registry in sorted(_families().items())}


__all__ = [
    "__version__",
    "available",
    "linearize",
    "make",
    "make_cls_and_kwargs",
    "make_optimizer",
    "make_scheduler",
    "peft",
]
