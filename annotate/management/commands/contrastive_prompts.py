import json

from django.core.management.base import BaseCommand, CommandError

from annotate.models import Dataset
from annotate.services.contrastive import (
    ContrastiveError, contrastive_sets_language_model, contrastive_sets_rule_based,
)


class Command(BaseCommand):
    help = ("Make contrastive prompt sets for a dataset's prompts: rule-based (SPEC section 2) or from a local "
            "language model folder. Stored with source and version; idempotent. (Imported sets: import_tia2.)")

    def add_arguments(self, parser):
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--source", required=True, choices=["rule_based", "language_model"])
        parser.add_argument("--model-path", help="language model folder (for --source language_model)")
        parser.add_argument("--k", type=int, default=8)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="cpu")

    def handle(self, *args, dataset, source, model_path, k, seed, device, **options):
        try:
            ds = Dataset.objects.get(name=dataset)
        except Dataset.DoesNotExist as exc:
            raise CommandError(f"dataset {dataset!r} does not exist") from exc
        try:
            if source == "rule_based":
                result = contrastive_sets_rule_based(dataset=ds)
            else:
                if not model_path:
                    raise CommandError("--model-path is required for --source language_model")
                result = contrastive_sets_language_model(dataset=ds, model_path=model_path, k=k, seed=seed,
                                                         device=device)
        except ContrastiveError as exc:
            raise CommandError(f"{exc}\nNothing was written.") from exc
        self.stdout.write(json.dumps({"source": result.source, "version": result.version, "created": result.created,
                                      "existing": result.existing, "prompts_without_set": len(result.empty)}))
