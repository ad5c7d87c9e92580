"""One small name -> factory registry, shared by optimizers, schedules, feature maps and linearization methods.

Each family keeps one :class:`Registry`; a method enters it with one explicit ``register`` call at import time.
Unknown names raise ``ValueError`` listing the closest valid names, never a bare ``KeyError``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry", "Registry", "closest_names", "families"]

# family name ("optimizers", "schedules", ...) -> its registry; what `hf_effi.available()` reports.
_FAMILIES: dict[str, Registry] = {}


def closest_names(name: str, valid: list[str], n: int = 3) -> list[str]:
    """The valid names closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, valid, n=n, cutoff=0.4)


@dataclass(frozen=True)
class Entry:
    """A registered method: its factory, a one-line description and free-form metadata."""

    name: str
    factory: Callable[..., Any]
    description: str
    meta: dict[str, Any] = field(default_factory=dict)

    def required_args(self) -> list[str]:
        """Keyword arguments of the factory without a default (read from its signature)."""
        sig = inspect.signature(self.factory)
        return [
            p.name
            for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]

    def accepted_args(self) -> set[str] | None:
        """Names the factory accepts, or ``None`` when it takes ``**kwargs``."""
        sig = inspect.signature(self.factory)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        return set(sig.parameters)


def families() -> dict[str, Registry]:
    """Every registry created so far, by family name."""
    return dict(_FAMILIES)


class Registry:
    """Maps names to :class:`Entry`. ``kind`` names one item in error messages ("optimizer"); ``family`` the
    group in :func:`hf_effi.available` ("optimizers")."""

    def __init__(self, kind: str, *, family: str):
        if family in _FAMILIES:
            raise ValueError(f"a registry for {family!r} already exists")
        self.kind = kind
        self.family = family
        _FAMILIES[family] = self
        self._entries: dict[str, Entry] = {}
        # Names that exist elsewhere (e.g. a Trainer) mapped to the message that points there.
        self._redirects: dict[str, str] = {}

    def register(self, name: str, factory: Callable[..., Any], description: str, **meta: Any) -> Callable[..., Any]:
        if not name or name != name.strip().lower():
            raise ValueError(f"{self.kind} names are lower-case without spaces, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name].factory!r})")
        self._entries[name] = Entry(name, factory, description, dict(meta))
        return factory

    def redirect(self, name: str, message: str) -> None:
        """Make ``get(name)`` raise ``ValueError(message)``: for names that belong to another component."""
        self._redirects[name] = message

    def get(self, name: str) -> Entry:
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = name.strip().lower()
        if key in self._entries:
            return self._entries[key]
        if key in self._redirects:
            raise ValueError(self._redirects[key])
        valid = sorted(self._entries)
        close = closest_names(key, valid)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"Unknown {self.kind} {name!r}.{hint} Valid {self.kind}s: {', '.join(valid)}.")

    def describe(self) -> dict[str, str]:
        return {name: e.description for name, e in sorted(self._entries.items())}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
