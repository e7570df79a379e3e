"""The demo's data, made by the project itself: TIA2-style counting and composition prompts
rendered by two procedural checkpoints, one careful and one sloppy, then a pairwise and a
rating study over their images for the demo annotator. With ``backend="tiny-diffusers"`` a
tiny random Stable Diffusion pipeline is also saved under the data folder, registered as a
diffusers checkpoint and run through the same worker (its images are noise: the studies
stay on the procedural checkpoints, whose ground truth is known)."""
from pathlib import Path

from django.conf import settings
from django.db import transaction

from annotate.models import Checkpoint, Dataset, GenerationJob, Prompt, Study
from annotate.roles import ANNOTATORS, RESEARCHERS
from annotate.services.accounts import user_create_with_role
from annotate.services.contrastive import contrastive_sets_rule_based
from annotate.services.generation import generation_job_create
from annotate.services.studies import study_add_members, study_create_pairwise, study_create_rating, study_open
from workers.ml.scenes import demo_prompts

DEMO_ACCOUNTS = {
    "researcher": ("researcher-demo-pass", RESEARCHERS),
    "annotator": ("annotator-demo-pass", ANNOTATORS),
}
DEMO_CHECKPOINTS = {
    "demo-careful": 0.1,  # error rate: share of images drawn wrong
    "demo-sloppy": 0.45,
}
DEMO_BACKENDS = ("procedural", "tiny-diffusers")
TINY_DIFFUSERS_CHECKPOINT = "demo-tiny-diffusers"
DEMO_INSTRUCTIONS = """Each image was made from the **description** above it.

- Judge only whether the image shows what the description says: the objects, and **how many** of each.
- Ignore style and image quality.
- When both images are equally right or equally wrong, answer **tie**.
"""
DEMO_RATING_INSTRUCTIONS = """The image was made from the **description** above it.

- Answer **yes** only when the image shows everything the description says: the objects, and
  **how many** of each. A missing object or a wrong count is a **no**.
- Ignore style and image quality.
- When you cannot tell, skip the image rather than guess.
"""


def demo_tiny_diffusers_checkpoint() -> Checkpoint:
    """The tiny random SD 1.x pipeline in DATA_DIR/models/tiny-sd, saved once, as a checkpoint."""
    existing = Checkpoint.objects.filter(name=TINY_DIFFUSERS_CHECKPOINT).first()
    folder = Path(settings.DATA_DIR) / "models" / "tiny-sd"
    if existing is not None and (folder / "model_index.json").is_file():
        return existing
    from annotate.services.scoring import folder_fingerprint
    from workers.ml.diffusion_random import save_random_pipeline

    save_random_pipeline(folder, size="tiny", seed=0)
    fields = {"backend": Checkpoint.Backend.DIFFUSERS, "location": str(folder), "config": {"batch_size": 8},
              "fingerprint": folder_fingerprint(str(folder), {"batch_size": 8}),
              "description": "Tiny random-weight Stable Diffusion 1.x pipeline (demo of the diffusers path)."}
    checkpoint, _ = Checkpoint.objects.update_or_create(name=TINY_DIFFUSERS_CHECKPOINT, defaults=fields)
    return checkpoint


@transaction.atomic
def demo_seed(*, backend: str = "procedural") -> dict:
    """Accounts, dataset, checkpoints, and the generation jobs followed by the studies.
    Running it again adds nothing."""
    if backend not in DEMO_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(DEMO_BACKENDS)}, not {backend!r}")
    for username, (password, role) in DEMO_ACCOUNTS.items():
        user_create_with_role(username=username, password=password, role=role)
    dataset, created = Dataset.objects.get_or_create(
        name="demo-scenes",
        defaults={"source": Dataset.Source.DEMO,
                  "description": "Counting and composition prompts in TIA2's templates, drawn procedurally."},
    )
    if created:
        Prompt.objects.bulk_create([
            Prompt(dataset=dataset, text=text, source_index=i,
                   category="composition" if " and " in text else "counting")
            for i, text in enumerate(demo_prompts())
        ])
    jobs = []
    for name, error_rate in DEMO_CHECKPOINTS.items():
        checkpoint, _ = Checkpoint.objects.get_or_create(
            name=name,
            defaults={"backend": Checkpoint.Backend.PROCEDURAL, "config": {"error_rate": error_rate},
                      "fingerprint": f"procedural-{error_rate}"},
        )
        if not GenerationJob.objects.filter(checkpoint=checkpoint, dataset=dataset).exists():
            jobs.append(generation_job_create(
                checkpoint=checkpoint, dataset=dataset, seeds=[0], images_per_seed=4,
                width=384, height=384, dtype=GenerationJob.DType.FLOAT32, enqueue=False,
            ))
    if backend == "tiny-diffusers":
        checkpoint = demo_tiny_diffusers_checkpoint()
        if not GenerationJob.objects.filter(checkpoint=checkpoint, dataset=dataset).exists():
            jobs.append(generation_job_create(
                checkpoint=checkpoint, dataset=dataset, seeds=[0], images_per_seed=1, width=64, height=64,
                num_inference_steps=4, dtype=GenerationJob.DType.FLOAT16, enqueue=False,
            ))
    contrastive_sets_rule_based(dataset=dataset)  # TextNorm's prompt sets (idempotent)
    if jobs:
        from celery import chain

        from workers.tasks import demo_studies_create, generation_job_run

        from workers.scoring_tasks import scoring_demo_run

        # Each job whole in its task: scoring and the studies need every image made first.
        steps = [generation_job_run.si(job.id, fan_out=False) for job in jobs]
        steps += [scoring_demo_run.si(), demo_studies_create.si()]
        from annotate.services.enqueue import enqueue_after_commit

        enqueue_after_commit(chain(*steps))  # a broker that is down fails nothing here
    return {"dataset": dataset, "jobs_created": len(jobs),
            "accounts": {u: p for u, (p, _) in DEMO_ACCOUNTS.items()}}


DEMO_REWARD_MODEL = "demo-tiny-clip"


def demo_reward_model():
    """A tiny random CLIP in DATA_DIR/models/tiny-clip, saved once and registered (its scores
    are noise: it shows the scoring path; register real weights with score_images)."""
    from annotate.models import RewardModel
    from annotate.services.scoring import reward_model_create

    existing = RewardModel.objects.filter(name=DEMO_REWARD_MODEL).first()
    folder = Path(settings.DATA_DIR) / "models" / "tiny-clip"
    if existing is not None and (folder / "config.json").is_file():
        return existing
    from workers.ml.reward_random import save_random_clip

    save_random_clip(folder)
    RewardModel.objects.filter(name=DEMO_REWARD_MODEL).delete()  # a stale entry whose folder is gone
    return reward_model_create(name=DEMO_REWARD_MODEL, kind="clip", location=str(folder))


def demo_images_score() -> list[int]:
    """Raw and TextNorm (rule-based contrastive prompts) scores of the demo checkpoints'
    images, as scoring jobs run here (the worker calls this after generation)."""
    from annotate.models import ScoringJob
    from annotate.services.scoring import scoring_job_create
    from workers.scoring import scoring_job_execute

    reward_model = demo_reward_model()
    dataset = Dataset.objects.get(name="demo-scenes")
    contrastive_sets_rule_based(dataset=dataset)
    scored = []
    names = [*DEMO_CHECKPOINTS, TINY_DIFFUSERS_CHECKPOINT]  # the tiny pipeline's, when the demo made it
    for checkpoint in Checkpoint.objects.filter(name__in=names, images__isnull=False).distinct().order_by("name"):
        job = ScoringJob.objects.filter(reward_model=reward_model, checkpoint=checkpoint).first()
        if job is None:
            job = scoring_job_create(reward_model=reward_model, checkpoint=checkpoint, variants=["raw", "textnorm"],
                                     prompt_set_source="rule_based", enqueue=False)
        scored.append(scoring_job_execute(job.id))
    return scored


@transaction.atomic
def demo_studies_create() -> list[Study]:
    """A pairwise study of the two checkpoints and a rating study of their images, open, with
    the demo annotator as a member. Gold items come from the procedural ground truth."""
    dataset = Dataset.objects.get(name="demo-scenes")
    checkpoints = list(Checkpoint.objects.filter(name__in=DEMO_CHECKPOINTS).order_by("name"))
    made = []
    if not Study.objects.filter(name="Demo: which image matches?").exists():
        made.append(study_create_pairwise(
            name="Demo: which image matches?", dataset=dataset, checkpoints=checkpoints, pairing="matched",
            instructions=DEMO_INSTRUCTIONS, gold_share=0.1, redundancy=3,
        ))
    if not Study.objects.filter(name="Demo: does it match?").exists():
        made.append(study_create_rating(
            name="Demo: does it match?", dataset=dataset, checkpoints=checkpoints,
            instructions=DEMO_RATING_INSTRUCTIONS, gold_share=0.1, redundancy=3,
        ))
    for study in made:
        study_add_members(study=study, usernames=list(DEMO_ACCOUNTS))
        study_open(study=study)
    return made
