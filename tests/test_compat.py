"""The import-time version check names every unsupported library and the pip command that fixes it."""

from importlib import metadata

import pytest

from hf_effi import _compat


def fake_versions(monkeypatch, **versions):
    real = metadata.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise metadata.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(_compat.metadata, "version", version)


def test_installed_versions_pass():
    _compat.check_versions()


@pytest.mark.parametrize(
    "versions,match",
    [
        ({"transformers": "4.57.1"}, r"transformers 4.57.1 is installed, but hf_effi needs transformers>=5.0,<6.0"),
        ({"transformers": "6.0.0.dev0"}, r"transformers>=5.0,<6.0"),
        ({"peft": "0.22.0"}, r"pip install 'peft>=0.21,<0.22'"),
        ({"accelerate": "0.34.0"}, r"accelerate>=1.10"),
        ({"triton": "2.1.0"}, r"triton>=3.3"),
        ({"peft": None}, r"peft is not installed"),
    ],
)
def test_unsupported_versions_are_named(monkeypatch, versions, match):
    fake_versions(monkeypatch, **versions)
    with pytest.raises(ImportError, match=match):
        _compat.check_versions()


def test_missing_triton_is_fine(monkeypatch):
    fake_versions(monkeypatch, triton=None)
    _compat.check_versions()


def test_every_problem_is_reported_at_once(monkeypatch):
    fake_versions(monkeypatch, transformers="4.40.0", peft="0.10.0")
    with pytest.raises(ImportError) as err:
        _compat.check_versions()
    assert "transformers 4.40.0" in str(err.value) and "peft 0.10.0" in str(err.value)
