"""Real-text corpora extracted offline from the running Python installation, with a fixed train/eval split.

Two domains, both read from the standard library of the interpreter that runs hf_effi (no download):

- ``"python_docs"``: the 79 reference-manual topics of ``pydoc_data.topics`` plus one help page per stdlib
  module, written like ``help(module)``: every module, class and function docstring under its qualified name
  and signature. Docstrings come from parsing the source files with ``ast``; no stdlib module is imported
  (some have side effects at import).
- ``"python_code"``: the stdlib source files themselves.

Both skip test suites (``test/``, ``tests/``, ``idlelib/idle_test``), ``site-packages``, ``pydoc_data`` (its
text is already in ``python_docs``), the generated character-mapping tables in ``encodings/`` (tables, not
code), and any file that is not utf-8 or does not parse.

The split is fixed: a document goes to ``"eval"`` when a SHA-256 of its name falls in the lowest 5 %, so it
depends neither on file-system order nor on ``PYTHONHASHSEED``. A module's help page and its source share
one name, so a module held out of ``python_docs`` is held out of ``python_code`` too and no eval docstring
leaks into the code domain's train split.

The text depends on the Python version (3.10 and 3.11 ship different stdlibs) and, slightly, on the
distribution that built the interpreter; ``corpus_info`` records ``sys.version_info[:2]`` and a SHA-256 of
the text so results can say which corpus they used. Extraction takes a few seconds; it is cached in-process
and on disk under ``hf_effi_cache_dir() / "corpora"``, keyed by the full interpreter version and stdlib path.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import os
import sys
import sysconfig
import warnings
from pathlib import Path

from hf_effi.data.cache import cache_key, cached_file, hf_effi_cache_dir

__all__ = ["EVAL_FRACTION", "SPLITS", "corpus_document_names", "corpus_info", "corpus_names", "is_eval_document",
           "load_corpus"]

SPLITS = ("train", "eval")
EVAL_FRACTION = 0.05
_CORPORA = ("python_docs", "python_code")
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"})
_FORMAT = 1  # bump when the extraction changes, so stale disk caches are not reused


def corpus_names() -> tuple[str, ...]:
    """The valid corpus names: ``("python_docs", "python_code")``."""
    return _CORPORA


def is_eval_document(name: str) -> bool:
    """Whether the document called ``name`` (e.g. ``"json/decoder.py"``) belongs to the eval split."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < EVAL_FRACTION * 2**64


def load_corpus(name: str, split: str = "train") -> list[str]:
    """The documents of corpus ``name`` in ``split`` (``"train"`` or ``"eval"``), sorted by document name.

    Returns a new list on each call (the cached copy cannot be changed through it).
    """
    _check_split(name, split)
    return list(_split(name, split)[1])


def corpus_document_names(name: str, split: str = "train") -> list[str]:
    """The document names of corpus ``name`` in ``split``, aligned with ``load_corpus(name, split)``."""
    _check_split(name, split)
    return list(_split(name, split)[0])


def corpus_info(name: str) -> dict:
    """Metadata of corpus ``name``: Python version, documents and characters per split, SHA-256 per split.

    ``python_version`` is ``list(sys.version_info[:2])``; ``sha256`` covers names and texts of the split, so two
    machines hold the same corpus exactly when their hashes agree. Returns a new dict on each call.
    """
    _check_name(name)
    return copy.deepcopy(_corpus_info(name))


@functools.cache
def _corpus_info(name: str) -> dict:
    info: dict = {"name": name, "python_version": list(sys.version_info[:2]), "python": sys.version.split()[0],
                  "format": _FORMAT, "documents": {}, "chars": {}, "sha256": {}}
    for split in SPLITS:
        names, texts = _split(name, split)
        digest = hashlib.sha256()
        for doc_name, text in zip(names, texts):
            digest.update(doc_name.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
        info["documents"][split] = len(texts)
        info["chars"][split] = sum(len(t) for t in texts)
        info["sha256"][split] = digest.hexdigest()
    return info


def _check_name(name: object) -> None:
    if not isinstance(name, str) or name not in _CORPORA:
        raise ValueError(f"corpus name={name!r} is unknown; valid names are {list(_CORPORA)}")


def _check_split(name: object, split: object) -> None:
    _check_name(name)
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; valid splits are {list(SPLITS)}")


@functools.cache
def _split(name: str, split: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names, texts = _documents(name)
    keep = [i for i, n in enumerate(names) if is_eval_document(n) == (split == "eval")]
    return tuple(names[i] for i in keep), tuple(texts[i] for i in keep)


def _cache_path(name: str) -> Path:
    key = cache_key(_FORMAT, name, sys.version, _stdlib_root().as_posix())
    return hf_effi_cache_dir() / "corpora" / f"{name}-py{sys.version_info[0]}.{sys.version_info[1]}-{key}.json"


@functools.cache
def _documents(name: str) -> tuple[list[str], list[str]]:
    """All documents of corpus ``name`` as (names, texts), sorted by name; from the disk cache when present."""
    path = _cache_path(name)
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        return stored["names"], stored["texts"]
    extracted = _extract_documents()  # one pass over the stdlib fills every corpus: cache them all
    for other, (names, texts) in extracted.items():
        _write_cache(_cache_path(other), names, texts)
    return extracted[name]


def _write_cache(path: Path, names: list[str], texts: list[str]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": _FORMAT, "python": sys.version, "names": names, "texts": texts}, f)

    try:
        cached_file(path, write)
    except OSError as err:  # a read-only cache only costs speed; say so instead of failing
        warnings.warn(f"could not cache a corpus at {path} ({err}); set HF_EFFI_CACHE to a writable folder",
                      stacklevel=4)


def _extract_documents() -> dict[str, tuple[list[str], list[str]]]:
    """Extract every corpus from the running interpreter, without any cache: name -> (names, texts), sorted."""
    from pydoc_data.topics import topics  # a plain dict of strings: safe to import

    docs: dict[str, dict[str, str]] = {name: {} for name in _CORPORA}
    for topic, text in topics.items():
        docs["python_docs"][f"pydoc_topics/{topic}"] = text.strip()
    for rel, source, tree in _stdlib_sources():
        docs["python_code"][rel] = source
        page = _help_page(_module_name(rel), tree)
        if page:
            docs["python_docs"][rel] = page
    out = {}
    for name, by_name in docs.items():
        names = sorted(n for n, t in by_name.items() if t.strip())
        out[name] = (names, [by_name[n] for n in names])
    return out


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_sources():
    """Yield ``(relative posix path, source, ast.Module)`` for each kept stdlib ``.py`` file, in sorted order."""
    root = _stdlib_root()
    for folder, dirs, files in os.walk(root):
        # sorting in place fixes the walk order; config-* holds build scripts, not library code
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith(("config-", ".")))
        for file in sorted(files):
            if not file.endswith(".py"):
                continue
            path = Path(folder, file)
            rel = path.relative_to(root).as_posix()
            try:
                source = path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if rel.startswith("encodings/") and "gencodec.py" in source:
                continue
            with warnings.catch_warnings():  # old escape sequences in a few files warn at parse time
                warnings.simplefilter("ignore")
                try:
                    tree = ast.parse(source, filename=rel)
                except (SyntaxError, ValueError):
                    continue
            yield rel, source, tree


def _module_name(rel: str) -> str:
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _help_page(module: str, tree: ast.Module) -> str:
    """A ``help(module)``-like page: each docstring under its qualified name and signature. Empty if none."""
    entries = []

    def visit(node: ast.AST, qualname: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{qualname}.{child.name}"
                doc = ast.get_docstring(child, clean=True)
                if doc:
                    if isinstance(child, ast.ClassDef):
                        bases = ", ".join(ast.unparse(b) for b in child.bases + child.keywords)
                        header = f"class {name}({bases})" if bases else f"class {name}"
                    else:
                        header = f"{name}({ast.unparse(child.args)})"
                    entries.append(f"{header}\n{_indent(doc)}")
                visit(child, name)

    visit(tree, module)
    module_doc = ast.get_docstring(tree, clean=True)
    if not entries and not module_doc:
        return ""
    head = f"Help on module {module}:" + (f"\n\n{module_doc}" if module_doc else "")
    return "\n\n".join([head, *entries])


def _indent(text: str) -> str:
    return "\n".join(("    " + line) if line else line for line in text.splitlines())
