"""Corpora from the Python installation: sizes, a fixed split, exclusions, determinism, clear errors."""

import json
import os
import subprocess
import sys

import pytest

from hf_effi.data.corpora import (
    EVAL_FRACTION,
    corpus_document_names,
    corpus_info,
    corpus_names,
    is_eval_document,
    load_corpus,
)


def _all_names(name):
    return corpus_document_names(name, "train") + corpus_document_names(name, "eval")


def test_names_and_bad_arguments():
    assert corpus_names() == ("python_docs", "python_code")
    with pytest.raises(ValueError, match=r"python_docs.*python_code"):
        load_corpus("wikitext")
    with pytest.raises(ValueError, match=r"split='test'.*'train', 'eval'"):
        load_corpus("python_docs", "test")
    with pytest.raises(ValueError, match="valid names"):
        corpus_info(["python_docs"])


def test_python_docs_holds_topics_and_docstrings_megabytes():
    docs = load_corpus("python_docs") + load_corpus("python_docs", "eval")
    names = _all_names("python_docs")
    from pydoc_data.topics import topics

    assert sum(n.startswith("pydoc_topics/") for n in names) == len(topics)
    chars = sum(len(d) for d in docs)
    assert chars > 2_500_000, chars  # 2.77M on 3.11
    page = dict(zip(names, docs))["json/__init__.py"]
    assert page.startswith("Help on module json:") and "json.dumps(obj, *, skipkeys=False" in page


def test_python_code_is_source():
    code = load_corpus("python_code")
    assert sum(len(c) for c in code) > 8_000_000
    text = dict(zip(corpus_document_names("python_code"), code))["json/decoder.py"]
    compile(text, "json/decoder.py", "exec")


@pytest.mark.parametrize("name", ["python_docs", "python_code"])
def test_split_is_disjoint_complete_and_about_five_percent(name):
    train, held_out = corpus_document_names(name, "train"), corpus_document_names(name, "eval")
    assert not set(train) & set(held_out)
    assert train == sorted(train) and held_out == sorted(held_out)
    assert all(is_eval_document(n) for n in held_out) and not any(is_eval_document(n) for n in train)
    assert 0.4 * EVAL_FRACTION < len(held_out) / (len(train) + len(held_out)) < 2 * EVAL_FRACTION
    assert len(load_corpus(name, "eval")) == len(held_out)


def test_split_is_a_fixed_hash_of_the_name():
    # Pinned values: a change here means every reported eval loss changes meaning.
    assert is_eval_document("chunk.py") and is_eval_document("copyreg.py") and is_eval_document("pydoc_topics/naming")
    assert not is_eval_document("json/__init__.py") and not is_eval_document("os.py")


def test_module_held_out_in_docs_is_held_out_in_code():
    code_names = set(_all_names("python_code"))
    shared_eval = [n for n in corpus_document_names("python_docs", "eval") if n in code_names]
    assert shared_eval and set(shared_eval) <= set(corpus_document_names("python_code", "eval"))


@pytest.mark.parametrize("name", ["python_docs", "python_code"])
def test_excludes_tests_site_packages_and_tables(name):
    for n in _all_names(name):
        parts = n.split("/")
        assert not {"test", "tests", "idle_test", "site-packages", "pydoc_data"} & set(parts[:-1]), n
    assert "encodings/cp1252.py" not in _all_names(name)


def test_returns_fresh_lists():
    docs = load_corpus("python_docs", "eval")
    docs.clear()
    assert load_corpus("python_docs", "eval")
    assert load_corpus("python_docs") == load_corpus("python_docs")


def test_info_records_python_version_and_hashes():
    info = corpus_info("python_docs")
    assert info["python_version"] == list(sys.version_info[:2])
    assert info["documents"]["eval"] == len(load_corpus("python_docs", "eval"))
    assert info["chars"]["train"] == sum(map(len, load_corpus("python_docs")))
    assert all(len(h) == 64 for h in info["sha256"].values())
    info["name"] = "changed"
    assert corpus_info("python_docs")["name"] == "python_docs"


@pytest.mark.slow
def test_fresh_extraction_in_another_process_gives_the_same_corpus(tmp_path):
    """Another hash seed and an empty cache (so the text is extracted again) give identical corpora."""
    script = ("import json; from hf_effi.data.corpora import corpus_info; "
              "print(json.dumps([corpus_info(n)['sha256'] for n in ('python_docs', 'python_code')]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_EFFI_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [corpus_info(n)["sha256"] for n in corpus_names()]
    assert len(list((tmp_path / "corpora").glob("*.json"))) == 2  # one pass caches both corpora
