from django.core.management.base import BaseCommand, CommandError

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
            derived = best_of_n_create(
                parent=Checkpoint.objects.get(name=o["parent"]),
                reward_model=RewardModel.objects.get(name=o["reward_model"]),
                dataset=Dataset.objects.get(name=o["dataset"]) if o["dataset"] else None,
                n=o["n"], variant=o["variant"], prompt_set_source=o["prompt_set_source"],
                prompt_set_version=o["prompt_set_version"], normalize=o["normalize"], scale=o["scale"],
                temperature=o["temperature"], name=o["name"],
            )
        except (ScoringError, Checkpoint.DoesNotExist, RewardModel.DoesNotExist, Dataset.DoesNotExist) as exc:
            raise CommandError(f"{exc}\nNothing was written.") from exc
        self.stdout.write(self.style.SUCCESS(
            f"{derived.name}: {derived.images.count()} images (checkpoint {derived.id})"))
