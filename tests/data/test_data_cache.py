"""The on-disk cache: location, stable keys, atomic writes that survive a race."""

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from hf_effi.data.cache import cache_key, cached_dir, cached_file, hf_effi_cache_dir


def test_cache_dir_from_env_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_EFFI_CACHE", str(tmp_path / "c"))
    assert hf_effi_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HF_EFFI_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hf_effi_cache_dir() == Path.home() / ".cache" / "hf_effi"


def test_cache_key_is_stable_and_checks_input():
    assert cache_key("a", 1, None, [2.5]) == "3c3651e4d5a6d7d6"  # pinned: same key on every machine
    assert cache_key("a", 1) != cache_key("a", 2)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        cache_key(object())


def test_cached_dir_builds_once(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "x.txt").write_text("hello")

    target = tmp_path / "entry"
    assert cached_dir(target, build) == target
    assert cached_dir(target, build) == target
    assert len(calls) == 1 and (target / "x.txt").read_text() == "hello"
    assert os.listdir(tmp_path) == ["entry"]  # no temporary folder left


def test_cached_dir_failed_build_leaves_nothing(tmp_path):
    def build(folder):
        (folder / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cached_dir(tmp_path / "entry", build)
    assert os.listdir(tmp_path) == []


def test_cached_dir_race_keeps_one_complete_copy(tmp_path):
    """Two writers build at once; both get the folder and exactly one copy survives, complete."""
    barrier = threading.Barrier(2)
    results, errors = [], []

    def build(folder):
        (folder / "a.bin").write_bytes(b"1" * 1000)
        barrier.wait(timeout=10)  # both builds are done before either renames
        (folder / "b.bin").write_bytes(b"2" * 1000)

    def worker():
        try:
            results.append(cached_dir(tmp_path / "entry", build))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors and results == [tmp_path / "entry"] * 2
    assert sorted(os.listdir(tmp_path)) == ["entry"]
    assert sorted(os.listdir(tmp_path / "entry")) == ["a.bin", "b.bin"]


def test_cached_file_writes_atomically(tmp_path):
    target = tmp_path / "sub" / "arr.npy"
    cached_file(target, lambda tmp: np.save(tmp, np.arange(5)))
    cached_file(target, lambda tmp: np.save(tmp, np.arange(9)))  # exists: not rewritten
    assert np.load(target).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        cached_file(tmp_path / "bad.npy", lambda tmp: (_ for _ in ()).throw(ValueError("no")))
    assert sorted(os.listdir(tmp_path)) == ["sub"]
