"""Contrastive prompt sets made here: rule-based or by a local language model.

(Imported sets come with the TIA2 import.) A set is stored with its source and a version
that names the generator and its settings; rerunning with the same version adds only sets
for prompts that have none. Prompts for which the generator gives nothing get no set and
are reported.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from django.db import transaction

from annotate.models import ContrastivePromptSet, Dataset
from annotate.services.paths import PathNotAllowed, input_path_check


class ContrastiveError(ValueError):
    pass


@dataclass
class ContrastiveResult:
    source: str
    version: str
    created: int = 0
    existing: int = 0
    empty: list[int] = field(default_factory=list)  # prompt ids with no contrastive prompt


def _store(dataset: Dataset, source: str, version: str, generator: str,
           make: Callable[[str], list[str]]) -> ContrastiveResult:
    result = ContrastiveResult(source=source, version=version)
    prompts = list(dataset.prompts.order_by("source_index").values_list("id", "text"))
    done = set(ContrastivePromptSet.objects.filter(prompt__dataset=dataset, source=source, version=version)
               .values_list("prompt_id", flat=True))
    rows = []
    for prompt_id, text in prompts:  # generate everything first, then write in one transaction
        if prompt_id in done:
            result.existing += 1
            continue
        texts = [t for t in dict.fromkeys(make(text)) if t != text]
        if not texts:
            result.empty.append(prompt_id)
            continue
        rows.append(ContrastivePromptSet(prompt_id=prompt_id, source=source, version=version,
                                         generator=generator, texts=texts))
    with transaction.atomic():
        created = ContrastivePromptSet.objects.bulk_create(rows, ignore_conflicts=True)
    result.created = len(created)
    return result


def contrastive_sets_rule_based(*, dataset: Dataset) -> ContrastiveResult:
    from workers.ml.contrastive import RULES_VERSION, rule_based_contrastive

    return _store(dataset, ContrastivePromptSet.Source.RULE_BASED, RULES_VERSION,
                  "workers.ml.contrastive.rule_based_contrastive", rule_based_contrastive)


def contrastive_sets_language_model(*, dataset: Dataset, model_path: str | Path, k: int = 8, seed: int = 0,
                                    max_new_tokens: int = 96, temperature: float = 0.8,
                                    device: str = "cpu") -> ContrastiveResult:
    from workers.ml.contrastive import LanguageModelGenerator, LanguageModelSettings

    try:
        path = input_path_check(Path(model_path), what="language model folder")
    except PathNotAllowed as exc:
        raise ContrastiveError(f"model_path: {exc}") from exc
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ContrastiveError(f"model_path: {model_path} is not a model folder (no config.json)")
    if not (isinstance(k, int) and k >= 1):
        raise ContrastiveError(f"k: must be a positive integer, not {k!r}")
    settings = LanguageModelSettings(k=k, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature)
    from annotate.services.scoring import folder_fingerprint

    tag = hashlib.sha256(json.dumps([folder_fingerprint(str(path), {}), asdict(settings)],
                                    sort_keys=True).encode()).hexdigest()[:16]
    try:
        generator = LanguageModelGenerator(str(path), settings, device=device)
    except ValueError as exc:
        raise ContrastiveError(f"model_path: {exc}") from exc
    return _store(dataset, ContrastivePromptSet.Source.LANGUAGE_MODEL, f"lm-{tag}", str(path), generator.generate)
