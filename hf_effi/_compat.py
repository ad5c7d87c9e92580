"""Import-time check of the libraries hf_effi extends: a clear error instead of an obscure one later."""

from __future__ import annotations

from importlib import metadata

from packaging.version import Version

__all__ = ["SUPPORTED", "check_versions"]

# name -> (lowest supported, first unsupported or None). Keep in step with pyproject.toml.
SUPPORTED: dict[str, tuple[str, str | None]] = {
    "torch": ("2.6", None),
    "transformers": ("5.0", "6.0"),
    "peft": ("0.21", "0.22"),
    "accelerate": ("1.10", None),
}
# Optional: checked only when installed (Triton kernels are used on CUDA and under TRITON_INTERPRET=1).
OPTIONAL: dict[str, tuple[str, str | None]] = {"triton": ("3.3", None)}


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _check(name: str, version: str, low: str, high: str | None) -> str | None:
    v = Version(Version(version).base_version)
    if v < Version(low) or (high is not None and v >= Version(high)):
        rng = f">={low}" + (f",<{high}" if high else "")
        return f"{name} {version} is installed, but hf_effi needs {name}{rng}: pip install '{name}{rng}'"
    return None


def check_versions() -> None:
    """Raise ``ImportError`` naming every unsupported dependency and the pip command that fixes it."""
    problems = []
    for name, (low, high) in SUPPORTED.items():
        version = _installed(name)
        if version is None:
            problems.append(f"{name} is not installed: pip install '{name}>={low}'")
        elif (msg := _check(name, version, low, high)) is not None:
            problems.append(msg)
    for name, (low, high) in OPTIONAL.items():
        version = _installed(name)
        if version is not None and (msg := _check(name, version, low, high)) is not None:
            problems.append(msg)
    if problems:
        raise ImportError("hf_effi cannot run with the installed libraries:\n  " + "\n  ".join(problems))
