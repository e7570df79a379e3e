from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotate.models import Dataset
from annotate.services.paths import PathNotAllowed, input_path_check
from annotate.services.prompt_import import DatasetMissing, PromptImportError, prompts_csv_import


def dataset_by_id(ref: str) -> Dataset | None:
    """The dataset whose id ``ref`` is, when ``ref`` is all digits and no dataset is named so
    (a name always wins: a dataset may be called "4")."""
    ref = ref.strip()
    if not (ref.isascii() and ref.isdigit()) or len(ref) > 18 or Dataset.objects.filter(name=ref).exists():
        return None
    return Dataset.objects.filter(pk=int(ref)).first()


class Command(BaseCommand):
    help = (
        "Import prompts from a UTF-8 CSV file with a header line: text (required), category, "
        "source_index. DATASET is a dataset's name, or its id (all digits, when no dataset has "
        "that name). A name that no dataset has creates a new dataset of that name, which the "
        "output says; --no-create refuses instead. Atomic and idempotent: prompts already there "
        "(same source_index, or same text without one) are not added again, and on any error "
        "nothing is written (a new dataset included)."
    )

    def add_arguments(self, parser):
        parser.add_argument("dataset", help="the dataset's name, or its id (digits that no dataset has as "
                                            "its name); a new name creates the dataset unless --no-create")
        parser.add_argument("file", type=Path, help="the CSV file")
        parser.add_argument("--no-create", action="store_true",
                            help="refuse (and write nothing) when no dataset has that name or id")

    def handle(self, *args, dataset: str, file: Path, no_create: bool = False, **options):
        try:
            path = input_path_check(file, what="prompts file")
            data = path.read_bytes()
        except PathNotAllowed as exc:
            raise CommandError(f"{exc}\nNothing was written.") from exc
        except OSError as exc:
            raise CommandError(f"{file}: cannot read: {exc.strerror or exc}\nNothing was written.") from exc
        by_id = dataset_by_id(dataset)
        if by_id is not None:
            self.stdout.write(f"{dataset!r} is no dataset's name: using dataset id {by_id.pk} ({by_id.name!r}).")
        try:
            result = prompts_csv_import(data=data, name=file.name, dataset=by_id, dataset_name=dataset,
                                        create=not no_create)
        except DatasetMissing as exc:
            or_id = " and none has that id" if dataset.strip().isdigit() else ""
            raise CommandError(f"no dataset is named {dataset.strip()!r}{or_id}, and --no-create refuses to "
                               "create one. GET /api/datasets/ lists the datasets; run without --no-create to "
                               "create it.\nNothing was written.") from exc
        except PromptImportError as exc:
            raise CommandError(f"{exc}\nNothing was written.") from exc
        if result.dataset_created:
            self.stdout.write(self.style.WARNING(
                f"CREATED a new dataset named {result.dataset.name!r} (id {result.dataset.pk}): no dataset had "
                f"that name{' or id' if dataset.strip().isdigit() else ''}. Use --no-create to refuse instead."))
        self.stdout.write(self.style.SUCCESS(
            f"{result.created} prompts added, {result.existing} already there "
            f"(dataset {result.dataset.name!r}, id {result.dataset.pk}, now has {result.dataset.prompts.count()})."
        ))
