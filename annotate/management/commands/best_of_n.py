from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotate.management.options import by_flags, row_named
from annotate.models import Checkpoint, Dataset, RewardModel
from annotate.services.scoring import ScoringError, best_of_n_create


class Command(BaseCommand):
    help = ("Make a best-of-n checkpoint: per prompt, the best of the parent's first n images by a reward "
            "model's stored scores (raw or TextNorm). Idempotent.")

    def add_arguments(self, parser):
        parser.add_argument("--parent", required=True, help="checkpoint name")
        parser.add_argument("--reward-model", required=True)
        parser.add_argument("--n", type=int, required=True)
        parser.add_argument("--variant", default="raw", choices=["raw", "textnorm"])
        parser.add_argument("--dataset", default=None)
        parser.add_argument("--prompt-set-source", default="imported")
        parser.add_argument("--prompt-set-version", default="")
        parser.add_argument("--normalize", default="minmax", choices=["minmax", "none"])
        parser.add_argument("--scale", type=float, default=1.0)
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument("--name", default="")

    def handle(self, *args, **o):
        try:
            with transaction.atomic():
                parent = row_named(Checkpoint, "--parent", o["parent"], "checkpoint", name=o["parent"])
                reward_model = row_named(RewardModel, "--reward-model", o["reward_model"], "reward model",
                                       name=o["reward_model"])
                dataset = row_named(Dataset, "--dataset", o["dataset"], "dataset", name=o["dataset"])
                derived = best_of_n_create(
                    parent=parent, reward_model=reward_model, dataset=dataset,
                    n=o["n"], variant=o["variant"], prompt_set_source=o["prompt_set_source"],
                    prompt_set_version=o["prompt_set_version"], normalize=o["normalize"], scale=o["scale"],
                    temperature=o["temperature"], name=o["name"],
                )
        except (CommandError, ScoringError) as exc:
            raise CommandError(f"{by_flags(str(exc))}\nNothing was written.") from exc
        self.stdout.write(self.style.SUCCESS(
            f"{derived.name}: {derived.images.count()} images (checkpoint {derived.id})"))
