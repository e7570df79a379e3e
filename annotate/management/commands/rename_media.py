from django.core.management.base import BaseCommand, CommandError

from annotate.services.media_rename import DEFAULT_BATCH, media_rename


class Command(BaseCommand):
    help = ("Move image and report files stored under names that tell their checkpoint, study, prompt "
            "or seed to opaque names, updating their rows one batch per transaction; imported images are "
            "re-encoded without their metadata on the way. Safe to repeat: a finished run finds nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, metavar="N",
                            help=f"files per transaction (default {DEFAULT_BATCH})")

    def handle(self, *args, **options):
        if options["batch_size"] < 1:
            raise CommandError("--batch-size: must be >= 1")
        result = media_rename(batch_size=options["batch_size"])
        self.stdout.write(f"images: {result.images} row(s) renamed; reports: {result.reports} row(s) "
                          f"renamed; {result.missing} row(s) whose file is missing left as they are")
