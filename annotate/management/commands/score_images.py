import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotate.management.options import by_flags, row_named
from annotate.models import Checkpoint, Dataset, GenerationJob, RewardModel
from annotate.services.scoring import ScoringError, reward_model_create, scoring_job_create


# The services name their parameters ("batch_size: ..."); the command's user knows the flags.
_FLAG_OF = {"name": "--reward-model", "reward_model": "--reward-model"}


class Command(BaseCommand):
    help = ("Score the images of a dataset, checkpoint or generation job with a reward model: raw and/or "
            "TextNorm. Runs inline (--enqueue: on the gpu queue). Idempotent: only missing scores are computed.")

    def add_arguments(self, parser):
        parser.add_argument("--reward-model", required=True, help="name of a registered reward model, or of one "
                            "to register with --kind and --location")
        parser.add_argument("--kind", choices=RewardModel.Kind.values)
        parser.add_argument("--location", help="local model folder (or hub id with --allow-download)")
        parser.add_argument("--allow-download", action="store_true")
        parser.add_argument("--device", default="", help="cpu, cuda, cuda:1 (default: cuda when available)")
        parser.add_argument("--dataset")
        parser.add_argument("--checkpoint")
        parser.add_argument("--generation-job", type=int)
        parser.add_argument("--variants", default="raw,textnorm")
        parser.add_argument("--prompt-set-source", default="imported", help="imported, rule_based or language_model")
        parser.add_argument("--prompt-set-version", default="")
        parser.add_argument("--normalize", default="minmax", choices=["minmax", "none"])
        parser.add_argument("--scale", type=float, default=1.0)
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--batch-size", type=int, default=64)
        parser.add_argument("--enqueue", action="store_true", help="send to the worker instead of running here")

    def handle(self, *args, **o):
        # Every write (a reward model registered here, the job) in one transaction: an error
        # leaves nothing behind. With --enqueue the task is sent after the commit.
        try:
            with transaction.atomic():
                targets = {
                    "dataset": row_named(Dataset, "--dataset", o["dataset"], "dataset", name=o["dataset"]),
                    "checkpoint": row_named(Checkpoint, "--checkpoint", o["checkpoint"], "checkpoint",
                                          name=o["checkpoint"]),
                    "generation_job": row_named(GenerationJob, "--generation-job", o["generation_job"],
                                              "generation job", pk=o["generation_job"]),
                }
                rm = RewardModel.objects.filter(name=o["reward_model"]).first()
                if rm is None or o["kind"]:
                    if not (o["kind"] and o["location"]):
                        raise CommandError(f"--reward-model {o['reward_model']!r}: not registered; "
                                           "give --kind and --location to register it")
                    config = {"allow_download": True} if o["allow_download"] else {}
                    if o["device"]:
                        config["device"] = o["device"]
                    rm = reward_model_create(name=o["reward_model"], kind=o["kind"], location=o["location"],
                                             config=config)
                variants = [v.strip() for v in o["variants"].split(",") if v.strip()]
                job = scoring_job_create(
                    reward_model=rm, **targets, variants=variants,
                    prompt_set_source=o["prompt_set_source"], prompt_set_version=o["prompt_set_version"],
                    normalize=o["normalize"], scale=o["scale"], temperature=o["temperature"],
                    batch_size=o["batch_size"], enqueue=o["enqueue"],
                )
        except (CommandError, ScoringError) as exc:
            raise CommandError(f"{by_flags(str(exc), _FLAG_OF)}\nNothing was written.") from exc
        if o["enqueue"]:
            self.stdout.write(f"scoring job {job.id} enqueued ({job.total_images} images)")
            return
        from workers.scoring import scoring_job_execute

        try:
            scored = scoring_job_execute(job.id)
        except Exception as exc:
            raise CommandError(f"scoring job {job.id} failed: {exc}") from exc
        job.refresh_from_db()
        self.stdout.write(json.dumps({"scoring_job": job.id, "scored_now": scored, "done": job.done_images,
                                      "total": job.total_images, "status": job.status}))
