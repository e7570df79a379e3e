"""The demo's data, made by the project itself: TIA2-style counting and composition prompts
rendered by two procedural checkpoints, one careful and one sloppy."""
from django.db import transaction

from annotate.models import Checkpoint, Dataset, GenerationJob, Prompt
from annotate.roles import ANNOTATORS, RESEARCHERS
from annotate.services.accounts import user_create_with_role
from annotate.services.generation import generation_job_create
from workers.ml.scenes import demo_prompts

DEMO_ACCOUNTS = {
    "researcher": ("researcher-demo-pass", RESEARCHERS),
    "annotator": ("annotator-demo-pass", ANNOTATORS),
}
DEMO_CHECKPOINTS = {
    "demo-careful": 0.1,  # error rate: share of images drawn wrong
    "demo-sloppy": 0.45,
}


@transaction.atomic
def demo_seed() -> dict:
    """Accounts, dataset, checkpoints and generation jobs. Running it again adds nothing."""
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
                width=256, height=256, dtype=GenerationJob.DType.FLOAT32,
            ))
    return {"dataset": dataset, "jobs_created": len(jobs),
            "accounts": {u: p for u, (p, _) in DEMO_ACCOUNTS.items()}}
