from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate.services.paths import PathNotAllowed, input_path_check
from annotate.services.prompt_import import PromptImportError, prompts_csv_import


class Command(BaseCommand):
    help = (
        "Import prompts from a UTF-8 CSV file with a header line: text (required), category, "
        "source_index. Creates the dataset when there is none of that name. Atomic and idempotent: "
        "prompts already there (same source_index, or same text without one) are not added again."
    )

    def add_arguments(self, parser):
        parser.add_argument("dataset", help="name of the dataset (created when missing)")
        parser.add_argument("file", type=Path, help="the CSV file")

    def handle(self, *args, dataset: str, file: Path, **options):
        try:
            path = input_path_check(file, what="prompts file")
            data = path.read_bytes()
        except PathNotAllowed as exc:
            raise CommandError(f"{exc}\nNothing was written.") from exc
        except OSError as exc:
            raise CommandError(f"{file}: cannot read: {exc.strerror or exc}\nNothing was written.") from exc
        try:
            result = prompts_csv_import(data=data, name=file.name, dataset_name=dataset)
        except PromptImportError as exc:
            raise CommandError(f"{exc}\nNothing was written.") from exc
        made = f"created dataset {result.dataset.name!r}; " if result.dataset_created else ""
        self.stdout.write(self.style.SUCCESS(
            f"{made}{result.created} prompts added, {result.existing} already there "
            f"(dataset {result.dataset.name!r} now has {result.dataset.prompts.count()})."
        ))
