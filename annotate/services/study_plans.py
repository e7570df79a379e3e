"""New studies as a researcher plans them: what a study would take before it is made (a
preview), and the paper's best-of-n study (raw reward against TextNorm) in one step."""
from __future__ import annotations

from django.db import transaction

from annotate.models import Checkpoint, Dataset, RewardModel, RewardScore, Study
from annotate.services.scoring import ScoringError, best_of_n_create
from annotate.services.studies import (
    NothingToCompare,
    StudyError,
    study_add_members,
    study_create_pairwise,
    study_create_rating,
)


def _create(kind: str, members: list[str], **fields) -> Study:
    if kind == Study.Kind.PAIRWISE:
        study = study_create_pairwise(**fields)
    elif kind == Study.Kind.RATING:
        fields.pop("pairing", None)
        study = study_create_rating(**fields)
    elif kind == "best_of_n":
        study = best_of_n_study_create(**fields)
    else:
        raise StudyError(f"kind: must be pairwise, rating or best_of_n, not {kind!r}")
    if members:
        study_add_members(study=study, usernames=members)
    return study


@transaction.atomic
def study_create(*, kind: str, members: list[str] = (), **fields) -> Study:
    """A study of ``kind`` (pairwise, rating, or best_of_n: a pairwise study of the raw and
    TextNorm best-of-n selections of one checkpoint), as a draft, with its members."""
    return _create(kind, list(members), **fields)


def study_preview(*, kind: str, members: list[str] = (), **fields) -> dict:
    """What ``study_create`` would make, computed by making it and rolling it back: items,
    gold items, and the judgments they take (items x redundancy). Nothing is kept."""
    with transaction.atomic():
        study = _create(kind, list(members), **fields)
        items = study.items.count()
        gold = study.items.filter(is_gold=True).count()
        preview = {"kind": study.kind, "items": items, "gold_items": gold, "redundancy": study.redundancy,
                   "judgments": items * study.redundancy, "members": study.memberships.count(),
                   "checkpoints": list(study.checkpoints.order_by("name").values_list("name", flat=True)),
                   "identical_picks": getattr(study, "identical_picks", None)}
        transaction.set_rollback(True)
    return preview


@transaction.atomic
def best_of_n_study_create(
    *, name: str, dataset: Dataset, parent: Checkpoint, reward_model: RewardModel, n: int,
    prompt_set_source: str = "imported", prompt_set_version: str = "", normalize: str = "minmax",
    scale: float = 1.0, temperature: float = 1.0, created_by=None, **fields,
) -> Study:
    """The paper's best-of-n experiment: per prompt, the best of ``parent``'s first n images by
    the raw reward and by its TextNorm, as two derived checkpoints, compared side by side in
    a matched pairwise study. Prompts where both picked the same image are left out (an image
    against itself asks annotators for nothing); ``study.identical_picks`` says how many, and
    the win rates are then among the prompts where the two rewards disagree."""
    try:
        picks = [best_of_n_create(parent=parent, reward_model=reward_model, n=n, variant=variant, dataset=dataset,
                                  prompt_set_source=prompt_set_source, prompt_set_version=prompt_set_version,
                                  normalize=normalize, scale=scale, temperature=temperature)
                 for variant in (RewardScore.Variant.RAW, RewardScore.Variant.TEXTNORM)]
    except ScoringError as exc:
        raise StudyError(str(exc)) from None
    fields.pop("pairing", None)
    fields.pop("checkpoints", None)
    try:  # prompts where both picked the same image are left out by the pairwise study itself
        study = study_create_pairwise(name=name, dataset=dataset, checkpoints=picks, pairing="matched",
                                      created_by=created_by, **fields)
    except NothingToCompare:
        raise StudyError("n: raw and TextNorm chose the same image for every prompt; there is nothing to compare") \
            from None
    study.identical_picks = study.identical_pairs
    return study
