"""The hf_effi on-disk cache: where it lives, stable keys, and atomic writes safe for concurrent processes.

Several processes (the two ranks of a DDP test, two pytest workers) may fill the same cache entry at the same
time. Every writer therefore builds its entry under a private temporary name in the same folder and moves it
into place with one ``os.replace``; a reader sees either no entry or a complete one, never a half-written one.
When two writers race, the first rename wins and the loser's copy is discarded (both built the same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["cache_key", "cached_dir", "cached_file", "hf_effi_cache_dir"]

CACHE_ENV = "HF_EFFI_CACHE"


def hf_effi_cache_dir() -> Path:
    """The cache root: ``$HF_EFFI_CACHE`` when set (and non-empty), else ``~/.cache/hf_effi``.

    Read at every call, so tests can point it elsewhere with ``monkeypatch.setenv``. Not created here.
    """
    root = os.environ.get(CACHE_ENV, "")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "hf_effi"


def cache_key(*parts: object) -> str:
    """A 16-hex-digit key from JSON-serialisable ``parts``; the same parts give the same key on every machine."""
    try:
        blob = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise TypeError(f"cache_key(*parts) needs JSON-serialisable parts (str, int, float, bool, None, lists, "
                        f"dicts), got {parts!r}: convert other objects to strings first") from err
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def cached_dir(path: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Return folder ``path``, first filling it with ``build(tmp_folder)`` if it does not exist yet.

    ``build`` writes into an empty temporary folder beside ``path``; the folder is then renamed to ``path``
    atomically. If another process created ``path`` meanwhile, its copy is kept and ours is removed.
    """
    path = Path(path)
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():  # not a lost race: a real failure (permissions, disk full)
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def cached_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Return file ``path``, first creating it with ``write(tmp_file)`` if it does not exist yet (atomic rename).

    ``write`` must create ``tmp_file`` exactly (for ``numpy.save`` pass a name that already ends in ``.npy``).
    """
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)  # on POSIX and Windows, replacing an existing file is atomic
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
