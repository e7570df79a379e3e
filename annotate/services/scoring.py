"""Reward models, scoring jobs and best-of-n checkpoints: the writes, and the selection of
the images and prompt sets a scoring job covers (shared with the worker)."""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

from django.db import transaction
from django.db.models import QuerySet

from annotate.models import (
    Checkpoint, ContrastivePromptSet, Dataset, GenerationJob, Image, RewardModel, RewardScore, ScoringJob,
)
from annotate.services.enqueue import enqueue_after_commit
from annotate.services.paths import PathNotAllowed, input_path_check

VARIANTS = (RewardScore.Variant.RAW, RewardScore.Variant.TEXTNORM)


class ScoringError(ValueError):
    """Bad input for scoring or best-of-n. The message names the field."""


def folder_fingerprint(location: str, config: dict) -> str:
    """sha256 over the files of a local model folder (names and contents), or a file's
    contents, and the config; for a hub id, over the id and the config."""
    from annotate.services.checkpoints import _hash_path

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    path = Path(location)
    if path.exists():
        _hash_path(digest, path)
    else:
        digest.update(location.encode())
    return digest.hexdigest()


@transaction.atomic
def reward_model_create(*, name: str, kind: str, location: str, config: dict | None = None) -> RewardModel:
    """Register a reward model (a local folder, or a hub id with config.allow_download)."""
    if config is not None and not isinstance(config, dict):
        raise ScoringError(f"config: must be a JSON object ({{...}}), not {type(config).__name__}")
    config = dict(config or {})
    if kind not in RewardModel.Kind.values:
        raise ScoringError(f"kind: {kind!r} is not one of {', '.join(RewardModel.Kind.values)}")
    if not name.strip():
        raise ScoringError("name: must not be empty")
    # A path (it exists, or it is written as one) must lie in the allowed roots; only what
    # looks like a hub id ("org/name") may be fetched, and only with allow_download.
    if Path(location).exists() or Path(location).is_absolute() or location.startswith((".", "~")):
        try:
            location = str(input_path_check(Path(location).expanduser(), what="reward model folder"))
        except PathNotAllowed as exc:
            raise ScoringError(f"location: {exc}") from exc
        if not Path(location).exists() and not config.get("allow_download"):
            raise ScoringError(f"location: {location} is not a local folder")
    elif not config.get("allow_download"):
        raise ScoringError(f"location: {location} is not a local folder (set config.allow_download to use a hub id)")
    existing = RewardModel.objects.filter(name=name).first()
    fingerprint = folder_fingerprint(location, config)
    if existing is not None:
        if (existing.kind, existing.location, existing.fingerprint) != (kind, location, fingerprint):
            raise ScoringError(f"name: a different reward model is already called {name!r}")
        return existing
    return RewardModel.objects.create(name=name, kind=kind, location=location, config=config,
                                      fingerprint=fingerprint)


def scoring_job_images(job: ScoringJob) -> QuerySet[Image]:
    """The images (with a file) a scoring job covers."""
    images = Image.objects.exclude(file="")
    if job.generation_job_id:
        from annotate.services.generation import generation_job_images

        # What the job stands for, including images it found made and did not make again.
        images = images.filter(id__in=generation_job_images(job.generation_job).values("id"))
    if job.checkpoint_id:
        images = images.filter(checkpoint_id=job.checkpoint_id)
    if job.dataset_id:
        images = images.filter(prompt__dataset_id=job.dataset_id)
    return images


def prompt_sets_select(*, prompt_ids, source: str, version: str = "") -> dict[int, ContrastivePromptSet]:
    """The contrastive set of each prompt: of ``source``, with ``version`` when given, else the
    newest. Raises ScoringError naming the prompts that have none."""
    if source not in ContrastivePromptSet.Source.values:
        raise ScoringError(f"prompt_set_source: {source!r} is not one of {', '.join(ContrastivePromptSet.Source.values)}")
    prompt_ids = set(prompt_ids)
    sets = ContrastivePromptSet.objects.filter(prompt_id__in=prompt_ids, source=source).select_related("prompt")
    if version:
        sets = sets.filter(version=version)
    chosen: dict[int, ContrastivePromptSet] = {}
    for s in sets.order_by("prompt_id", "created_at", "id"):
        chosen[s.prompt_id] = s  # the newest wins
    missing = sorted(prompt_ids - set(chosen))
    if missing:
        shown = ", ".join(str(p) for p in missing[:10]) + (" ..." if len(missing) > 10 else "")
        what = f"source {source!r}" + (f", version {version!r}" if version else "")
        raise ScoringError(f"prompt_set_source: {len(missing)} prompt(s) have no contrastive set of {what} "
                           f"(prompt ids {shown})")
    return chosen


@transaction.atomic
def scoring_job_create(
    *, reward_model: RewardModel, dataset: Dataset | None = None, checkpoint: Checkpoint | None = None,
    generation_job: GenerationJob | None = None, variants=("raw", "textnorm"), prompt_set_source: str = "imported",
    prompt_set_version: str = "", normalize: str = "minmax", scale: float = 1.0, temperature: float = 1.0,
    batch_size: int = 64, created_by=None, enqueue: bool = True,
) -> ScoringJob:
    """Create a scoring job (checked: writes nothing on bad input) and enqueue it after commit."""
    variants = list(dict.fromkeys(variants))
    if not variants or any(v not in VARIANTS for v in variants):
        raise ScoringError(f"variants: must be a non-empty list of {', '.join(VARIANTS)}, not {variants}")
    if dataset is None and checkpoint is None and generation_job is None:
        raise ScoringError("dataset, checkpoint or generation_job: give at least one")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ScoringError(f"batch_size: must be a positive integer, not {batch_size!r}")
    textnorm = RewardScore.Variant.TEXTNORM in variants
    if textnorm and normalize not in RewardScore.Normalize.values:
        raise ScoringError(f"normalize: must be one of {', '.join(RewardScore.Normalize.values)}, not {normalize!r}")
    # Checked for raw-only jobs too: the row keeps them (and the database refuses them otherwise).
    if not scale > 0:
        raise ScoringError(f"scale: must be > 0, not {scale}")
    if not temperature > 0:
        raise ScoringError(f"temperature: must be > 0, not {temperature}")
    job = ScoringJob(
        reward_model=reward_model, dataset=dataset, checkpoint=checkpoint, generation_job=generation_job,
        variants=variants, prompt_set_source=prompt_set_source if textnorm else "",
        prompt_set_version=prompt_set_version if textnorm else "", normalize=normalize if textnorm else "",
        scale=scale, temperature=temperature, batch_size=batch_size, created_by=created_by,
    )
    images = scoring_job_images(job)
    total = images.count()
    if total == 0:
        raise ScoringError("dataset, checkpoint or generation_job: no images with files to score")
    if textnorm:
        prompt_sets_select(prompt_ids=images.values_list("prompt_id", flat=True).distinct(),
                           source=prompt_set_source, version=prompt_set_version)
    job.total_images = total
    job.save()
    if enqueue:
        from workers.scoring_tasks import scoring_job_run

        # After commit, so that the worker never looks for a row that is not there yet; a broker
        # that is down leaves the job queued for requeue_jobs (annotate.services.enqueue).
        enqueue_after_commit(scoring_job_run, job.id)
    return job


# ---- best-of-n -----------------------------------------------------------------------

@transaction.atomic
def best_of_n_create(
    *, parent: Checkpoint, reward_model: RewardModel, n: int, variant: str = "raw", dataset: Dataset | None = None,
    prompt_set_source: str = "imported", prompt_set_version: str = "", normalize: str = "minmax",
    scale: float = 1.0, temperature: float = 1.0, name: str = "",
) -> Checkpoint:
    """A checkpoint whose image for each prompt is the best by ``reward_model`` (raw or TextNorm)
    of the first ``n`` images (by seed, index) of ``parent`` for that prompt.

    The derived images reuse the chosen files (same name and sha256) and all have seed 0 and
    index 0, so that two best-of-n checkpoints of one parent (say raw against TextNorm) pair
    up prompt by prompt in a matched pairwise study. Idempotent: a rerun with the same
    parameters returns the same checkpoint and adds only images of new prompts.
    """
    if variant not in VARIANTS:
        raise ScoringError(f"variant: must be one of {', '.join(VARIANTS)}, not {variant!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ScoringError(f"n: must be a positive integer, not {n!r}")
    if parent.backend == Checkpoint.Backend.BEST_OF_N:
        raise ScoringError("parent: a best-of-n checkpoint makes no images to select from; give its parent")
    config = {"reward_model": reward_model.id, "reward_model_name": reward_model.name, "variant": variant, "n": n}
    if variant == RewardScore.Variant.TEXTNORM:
        if normalize not in RewardScore.Normalize.values:
            raise ScoringError(f"normalize: must be one of {', '.join(RewardScore.Normalize.values)}, not {normalize!r}")
        config |= {"prompt_set_source": prompt_set_source, "prompt_set_version": prompt_set_version,
                   "normalize": normalize, "scale": float(scale), "temperature": float(temperature)}
    images = Image.objects.filter(checkpoint=parent).exclude(file="")
    if dataset is not None:
        images = images.filter(prompt__dataset=dataset)
    by_prompt: dict[int, list[Image]] = defaultdict(list)
    for image in images.order_by("prompt_id", "seed", "index"):
        if len(by_prompt[image.prompt_id]) < n:
            by_prompt[image.prompt_id].append(image)
    if not by_prompt:
        raise ScoringError(f"parent: checkpoint {parent.name!r} has no images with files")
    short = {p: len(v) for p, v in by_prompt.items() if len(v) < n}
    if short:
        first = ", ".join(f"prompt {p} has {k}" for p, k in list(short.items())[:5])
        raise ScoringError(f"n: {len(short)} prompt(s) have fewer than {n} images ({first})")
    scores = RewardScore.objects.filter(
        reward_model=reward_model, variant=variant, image__in=[i for v in by_prompt.values() for i in v]
    )
    if variant == RewardScore.Variant.TEXTNORM:
        sets = prompt_sets_select(prompt_ids=by_prompt, source=prompt_set_source, version=prompt_set_version)
        scores = scores.filter(normalize=normalize, scale=scale, temperature=temperature,
                               prompt_set_id__in=[s.id for s in sets.values()])
        value = {(i, ps): v for i, ps, v in scores.values_list("image_id", "prompt_set_id", "value")}
        score_of = {i.id: value.get((i.id, sets[i.prompt_id].id)) for v in by_prompt.values() for i in v}
    else:
        score_of = dict(scores.values_list("image_id", "value"))
    unscored = [i.id for v in by_prompt.values() for i in v if score_of.get(i.id) is None]
    if unscored:
        raise ScoringError(
            f"reward_model: {len(unscored)} image(s) of {parent.name!r} have no {variant} score by "
            f"{reward_model.name!r} with these parameters (run a scoring job first; image ids {unscored[:5]})"
        )
    name = name or _best_of_n_name(parent, config)
    fingerprint = hashlib.sha256(json.dumps([parent.id, config], sort_keys=True).encode()).hexdigest()
    derived, created = Checkpoint.objects.get_or_create(
        name=name, defaults={"backend": Checkpoint.Backend.BEST_OF_N, "derived_from": parent, "config": config,
                             "fingerprint": fingerprint,
                             "description": f"best of {n} of {parent.name} by {reward_model.name} ({variant})"},
    )
    if not created and (derived.derived_from_id != parent.id or derived.config != config):
        raise ScoringError(f"name: checkpoint {name!r} exists with other parameters")
    have = set(Image.objects.filter(checkpoint=derived).values_list("prompt_id", flat=True))
    rows = []
    for prompt_id, candidates in by_prompt.items():
        if prompt_id in have:
            continue
        # Highest score; ties go to the lowest (seed, index): deterministic.
        best = max(candidates, key=lambda i: (score_of[i.id], -i.seed, -i.index))
        rows.append(Image(
            prompt_id=prompt_id, checkpoint=derived, seed=0, index=0, file=best.file.name, sha256=best.sha256,
            size_bytes=best.size_bytes, width=best.width, height=best.height,
            metadata={**best.metadata, "selected_from": best.id, "selected_seed": best.seed,
                      "selected_index": best.index, "score": score_of[best.id]},
        ))
    Image.objects.bulk_create(rows, ignore_conflicts=True)
    return derived


def _best_of_n_name(parent: Checkpoint, config: dict) -> str:
    tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{parent.name[:120]} best-of-{config['n']} {config['reward_model_name'][:40]} {config['variant']} {tag}"
