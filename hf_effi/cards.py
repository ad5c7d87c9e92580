"""Model cards: a ``README.md`` with Hub metadata, written next to every checkpoint hf_effi makes.

The card says how the weights were made (method, settings, data), what the run measured (and nothing else), how to
load them, and which library versions produced them. Layouts live in ``hf_effi/model_cards/<template>.md`` as
:class:`string.Template` files; the front matter is YAML the Hugging Face Hub reads (``library_name``,
``base_model``, ``tags``, ``pipeline_tag``).
"""

from __future__ import annotations

import json
import numbers
import platform
import string
from collections.abc import Iterable, Mapping
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["available_templates", "checkpoint_kind", "write_model_card"]

# architectures suffix -> (Hub pipeline tag, Auto class that loads it)
_HEADS = {
    "ForCausalLM": ("text-generation", "AutoModelForCausalLM"),
    "ForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
    "ForTokenClassification": ("token-classification", "AutoModelForTokenClassification"),
    "ForQuestionAnswering": ("question-answering", "AutoModelForQuestionAnswering"),
    "ForMaskedLM": ("fill-mask", "AutoModelForMaskedLM"),
    "ForConditionalGeneration": ("text2text-generation", "AutoModelForSeq2SeqLM"),
}
# peft task_type -> (Hub pipeline tag, Auto class of the base model)
_PEFT_TASKS = {
    "CAUSAL_LM": ("text-generation", "AutoModelForCausalLM"),
    "SEQ_CLS": ("text-classification", "AutoModelForSequenceClassification"),
    "TOKEN_CLS": ("token-classification", "AutoModelForTokenClassification"),
    "QUESTION_ANS": ("question-answering", "AutoModelForQuestionAnswering"),
    "SEQ_2_SEQ_LM": ("text2text-generation", "AutoModelForSeq2SeqLM"),
    "FEATURE_EXTRACTION": ("feature-extraction", "AutoModel"),
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_VERSIONED = ("hf_effi", "torch", "transformers", "peft", "accelerate")


def available_templates() -> list[str]:
    """Names of the card templates shipped with hf_effi (``template=`` accepts these or a path to a ``.md`` file)."""
    folder = resources.files("hf_effi") / "model_cards"
    return sorted(p.name[:-3] for p in folder.iterdir() if p.name.endswith(".md"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-save the checkpoint before writing its card") from err


def checkpoint_kind(output_dir: str | Path) -> str:
    """What ``output_dir`` holds: ``"peft"`` (adapter_config.json), ``"linearized"`` (an hf_effi model type) or
    ``"model"`` (anything else, e.g. a plain transformers checkpoint)."""
    folder = Path(output_dir)
    if (folder / "adapter_config.json").is_file():
        return "peft"
    if (folder / "config.json").is_file():
        model_type = str(_read_json(folder / "config.json").get("model_type", ""))
        if model_type.startswith("hf_effi"):
            return "linearized"
    return "model"


def _head(folder: Path, kind: str) -> tuple[str | None, str]:
    """(pipeline tag or None, Auto class) read from the checkpoint's own config."""
    if kind == "peft":
        task = _read_json(folder / "adapter_config.json").get("task_type")
        return _PEFT_TASKS.get(str(task), (None, "AutoModel"))
    if (folder / "config.json").is_file():
        for arch in _read_json(folder / "config.json").get("architectures") or []:
            for suffix, head in _HEADS.items():
                if str(arch).endswith(suffix):
                    return head
    return None, "AutoModel"


def _peft_needs_hf_effi(folder: Path) -> bool:
    """True when the adapter's peft_type is one hf_effi adds to peft (so ``import hf_effi`` must run first)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = str(_read_json(folder / "adapter_config.json").get("peft_type", ""))
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    return config_cls is None or not config_cls.__module__.startswith("peft.")


def _cell(value: Any) -> str:
    """One Markdown table cell: numbers compact, containers as inline JSON, pipes escaped."""
    if isinstance(value, bool) or value is None:
        text = str(value).lower() if isinstance(value, bool) else "none"
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    elif isinstance(value, numbers.Real):
        text = f"{float(value):.6g}"
    elif isinstance(value, (Mapping, list, tuple)):
        text = "`" + json.dumps(value, default=str, separators=(", ", ": ")) + "`"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _check_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, float | int, str]]:
    """Validate ``metrics`` (name -> number or (number, unit)) and return (name, value, unit) rows."""
    rows = []
    for name, entry in metrics.items():
        value, unit = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, "")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"metrics[{name!r}] must be a number or a (number, unit) tuple, got {entry!r} "
                f"({type(entry).__name__}); pass the measured value, e.g. metrics={{{name!r}: 3.21}}"
            )
        if not isinstance(unit, str):
            raise TypeError(f"metrics[{name!r}] unit must be a string, got {unit!r}; e.g. ({value!r}, 's')")
        rows.append((str(name), value, unit))
    return rows


def _data_section(data: Mapping[str, Any]) -> str:
    if not data:
        return "Not recorded."
    lines = []
    for key, value in data.items():
        shown = f"{value:,}" if isinstance(value, numbers.Integral) and not isinstance(value, bool) else _cell(value)
        lines.append(f"- **{key}**: {shown}")
    return "\n".join(lines)


def _how_to_load(folder: Path, kind: str, auto_class: str, base_model: str | None) -> str:
    has_tokenizer = any((folder / name).is_file() for name in _TOKENIZER_FILES)
    path_line = f'path = "{folder.name}"  # this folder, or its id on the Hub'
    lines = []
    if kind == "linearized":
        lines.append("import hf_effi  # registers the hf_effi model type with transformers")
    elif kind == "peft" and _peft_needs_hf_effi(folder):
        lines.append("import hf_effi  # registers the hf_effi PEFT tuner with peft")
    imports = [auto_class] + (["AutoTokenizer"] if has_tokenizer else [])
    if kind == "peft":
        lines.append("from peft import PeftModel")
    lines += [f"from transformers import {', '.join(imports)}", "", path_line]
    if kind == "peft":
        lines.append(f'base = {auto_class}.from_pretrained("{base_model}")')
        lines.append("model = PeftModel.from_pretrained(base, path)")
    else:
        lines.append(f"model = {auto_class}.from_pretrained(path)")
    if has_tokenizer:
        lines.append("tokenizer = AutoTokenizer.from_pretrained(path)")
    return "```python\n" + "\n".join(lines) + "\n```"


def _versions() -> str:
    found = []
    for name in _VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return "Produced with " + ", ".join(found) + f", Python {platform.python_version()}."


def _load_template(template: str | Path) -> tuple[string.Template, str]:
    path = Path(template)
    if path.suffix == ".md" and path.is_file():
        return string.Template(path.read_text()), str(path)
    names = available_templates()
    if str(template) not in names:
        raise ValueError(
            f"template={str(template)!r} is neither a shipped card template nor an existing .md file; "
            f"use one of {', '.join(names)} or a path to your own template"
        )
    text = (resources.files("hf_effi") / "model_cards" / f"{template}.md").read_text()
    return string.Template(text), str(template)


def _validate(output_dir: Any, method: Any, settings: Any, data: Any, tags: Any, extra_sections: Any) -> Path:
    folder = Path(output_dir)
    if not folder.is_dir():
        raise ValueError(
            f"output_dir={str(output_dir)!r} is not an existing directory; save the checkpoint there "
            "(e.g. model.save_pretrained(output_dir)) before writing its card"
        )
    if not isinstance(method, str) or not method.strip():
        raise ValueError(f"method must be a non-empty string naming how the weights were made, got {method!r}")
    for arg, value in (("settings", settings), ("data", data)):
        if not isinstance(value, Mapping):
            raise TypeError(f"{arg} must be a dict, got {type(value).__name__}; e.g. {arg}={{'lr': 1e-3}}")
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise TypeError(f"tags must be a list of strings, got {tags!r}; e.g. tags=['pretraining']")
    if extra_sections is not None and not (
        isinstance(extra_sections, Mapping) and all(isinstance(v, str) for v in extra_sections.values())
    ):
        raise TypeError(f"extra_sections must map a section title to Markdown text, got {extra_sections!r}")
    return folder


def write_model_card(
    output_dir: str | Path,
    *,
    base_model: str | None,
    method: str,
    summary: str,
    settings: Mapping[str, Any],
    data: Mapping[str, Any],
    metrics: Mapping[str, Any],
    tags: Iterable[str] = (),
    template: str | Path = "default",
    extra_sections: Mapping[str, str] | None = None,
) -> Path:
    """Write ``output_dir/README.md``: Hub front matter plus method, settings, data, metrics, loading and versions.

    Args:
        output_dir: the saved checkpoint (plain model, PEFT adapter or linearized model); it must exist.
        base_model: Hub id or path of the model these weights start from, or ``None`` when trained from scratch.
        method: what made the weights (an optimizer, tuner or linearization name); it also becomes a tag.
        summary: one or two sentences opening the card.
        settings: hyper-parameters shown as a table (name -> value).
        data: what the run trained on, e.g. ``{"dataset": "pydoc topics", "tokens": 1_048_576}``.
        metrics: what the run measured, name -> number or ``(number, unit)``; only these appear in the card.
        tags: extra Hub tags (``hf_effi`` and ``method`` are always added).
        template: a name from :func:`available_templates` or a path to a ``string.Template`` ``.md`` file;
            ``"default"`` becomes ``"peft"`` or ``"linearized"`` when the checkpoint is one of those.
        extra_sections: more sections, title -> Markdown, placed before the software versions.

    Returns:
        The path of the written ``README.md`` (an existing one, e.g. peft's default card, is replaced).
    """
    folder = _validate(output_dir, method, settings, data, tags, extra_sections)
    metric_rows = _check_metrics(metrics) if isinstance(metrics, Mapping) else None
    if metric_rows is None:
        raise TypeError(f"metrics must be a dict of name -> number, got {type(metrics).__name__}")
    kind = checkpoint_kind(folder)
    pipeline_tag, auto_class = _head(folder, kind)
    if kind == "peft" and base_model is None:
        base_model = _read_json(folder / "adapter_config.json").get("base_model_name_or_path")
        if not base_model:
            raise ValueError(
                f"base_model=None but {folder} holds a PEFT adapter with no base_model_name_or_path; "
                "pass base_model='<hub id or path>' so the card can say what the adapter applies to"
            )

    front: dict[str, Any] = {"library_name": "peft" if kind == "peft" else "transformers"}
    if base_model is not None:
        front["base_model"] = str(base_model)
    front["tags"] = list(dict.fromkeys(["hf_effi", method, *tags]))
    if pipeline_tag is not None:
        front["pipeline_tag"] = pipeline_tag

    if str(template) == "default" and kind != "model":
        template = kind  # the generic layout would describe an adapter or a linearized model as plain training
    body_template, template_name = _load_template(template)
    extra = "".join(f"\n## {title}\n\n{text.strip()}\n" for title, text in (extra_sections or {}).items())
    fields = {
        "title": folder.resolve().name,
        "summary": summary.strip(),
        "method": method,
        "base_model_sentence": f"It starts from `{base_model}`." if base_model else "It was trained from scratch.",
        "settings_table": _table(("Setting", "Value"), list(settings.items())) if settings else "Not recorded.",
        "data_section": _data_section(data),
        "metrics_table": _table(("Metric", "Value", "Unit"), metric_rows) if metric_rows else "Nothing was measured.",
        "how_to_load": _how_to_load(folder, kind, auto_class, base_model),
        "extra_sections": extra,
        "versions": _versions(),
    }
    try:
        body = body_template.substitute(fields)
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"template {template_name!r} has an unknown or malformed placeholder ({err}); "
            f"valid placeholders: {', '.join('$' + k for k in fields)} (write $$ for a literal $)"
        ) from err
    card = folder / "README.md"
    card.write_text("---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body)
    return card
