import sys

from django.core.management.base import BaseCommand, CommandError

from annotate.services.exports import ExportError, study_find
from annotate.services.reports import (
    DEFAULT_ROUNDS, DEFAULT_SEED, MAX_ROUNDS, MIN_ROUNDS, ReportError, report_render, rounds_check, study_report_data,
)


class Command(BaseCommand):
    help = "Write a study's report (HTML with inline plots, CSV or JSON) to a file, computed here."

    def add_arguments(self, parser):
        parser.add_argument("study", help="the study's public id, id or exact name")
        parser.add_argument("--format", choices=["html", "csv", "json"], default="html")
        parser.add_argument("--out", required=True, help="file to write, or - for standard output")
        parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"bootstrap rounds, {MIN_ROUNDS:,} to {MAX_ROUNDS:,}")
        parser.add_argument("--seed", type=int, default=DEFAULT_SEED)

    def handle(self, *args, **options):
        try:
            study = study_find(options["study"])
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        try:
            rounds_check(options["rounds"])
            content = report_render(study_report_data(study=study, rounds=options["rounds"], seed=options["seed"]),
                                    options["format"])
        except ReportError as exc:
            raise CommandError(str(exc)) from exc
        if options["out"] == "-":
            sys.stdout.buffer.write(content)
            return
        with open(options["out"], "wb") as fh:
            fh.write(content)
        self.stderr.write(f"{study.name}: {options['format']} report written to {options['out']}")
