from django.core.management.base import BaseCommand, CommandError

from annotate.services import exports


class Command(BaseCommand):
    help = ("Export a study's judgments as CSV or JSON Lines, streamed with constant memory "
            "(the same columns and order as the API export).")

    def add_arguments(self, parser):
        parser.add_argument("study", help="the study's public id, id or exact name")
        parser.add_argument("--format", dest="fmt", choices=exports.FORMATS, default="csv")
        parser.add_argument("--out", default="-", help="file to write, or - for standard output (default)")
        parser.add_argument("--chunk-size", type=int, default=exports.CHUNK_SIZE)

    def handle(self, *args, study, fmt, out, chunk_size, **options):
        try:
            found = exports.study_find(study)
        except exports.ExportError as exc:
            raise CommandError(str(exc)) from exc
        chunks = exports.judgments_export_chunks(study=found, fmt=fmt, chunk_size=chunk_size)
        if out == "-":
            for piece in chunks:
                self.stdout.write(piece, ending="")
            return
        with open(out, "w", encoding="utf-8", newline="") as handle:
            for piece in chunks:
                handle.write(piece)
        self.stderr.write(f"wrote {out}")
