import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate.services.tia2_import import Tia2ImportError, tia2_import


class Command(BaseCommand):
    help = (
        "Import the TIA2 release (PATH/human_annotations/*.json, PATH/prompts/*.json): one dataset "
        "per category, prompts, images, human labels and contrastive prompt sets. Atomic and idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path, help="folder of the TIA2 release")
        parser.add_argument(
            "--images", type=Path, default=None,
            help="folder with one sub-folder of images per category; images not found are recorded as missing",
        )
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")

    def handle(self, *args, path: Path, images: Path | None, json: bool, **options):
        started = time.perf_counter()
        try:
            result = tia2_import(root=path, images_dir=images)
        except Tia2ImportError as exc:
            raise CommandError(f"{exc}\nNothing was written.") from exc
        seconds = round(time.perf_counter() - started, 2)
        summary = {
            "created": dict(result.created),
            "created_anything": result.created_anything,
            "seconds": seconds,
            "categories": result.categories,
        }
        if json:
            self.stdout.write(_json_dumps(summary))
            return
        if result.created_anything:
            created = ", ".join(f"{n} {what}" for what, n in result.created.items() if n)
            self.stdout.write(self.style.SUCCESS(f"Imported in {seconds} s: {created}."))
        else:
            self.stdout.write(self.style.SUCCESS(f"Already imported: nothing created ({seconds} s)."))
        header = f"{'category':<14}{'prompts':>8}{'images':>8}{'w/ file':>8}{'1':>7}{'0':>7}{'-1':>6}{'maj.+':>7}{'rate':>7}{'contr.':>8}"
        self.stdout.write(header)
        for category, s in result.categories.items():
            self.stdout.write(
                f"{category:<14}{s['prompts']:>8}{s['images']:>8}{s['images_with_file']:>8}"
                f"{s['labels']['1']:>7}{s['labels']['0']:>7}{s['labels']['-1']:>6}"
                f"{s['majority_positive_images']:>7}{s['majority_positive_rate']:>7.3f}"
                f"{s['contrastive_prompts']:>8}"
            )


def _json_dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
