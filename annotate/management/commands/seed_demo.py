from django.core.management.base import BaseCommand

from annotate.services.demo import DEMO_BACKENDS, demo_seed


class Command(BaseCommand):
    help = "Create the demo accounts, dataset, checkpoints and generation jobs (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--backend", choices=DEMO_BACKENDS, default="procedural")

    def handle(self, *args, backend: str = "procedural", **options):
        result = demo_seed(backend=backend)
        self.stdout.write(self.style.SUCCESS(
            f"Demo data ready: dataset {result['dataset'].name}, {result['jobs_created']} generation job(s) queued."
        ))
        for username, password in result["accounts"].items():
            self.stdout.write(f"  {username:<11} password: {password}")
