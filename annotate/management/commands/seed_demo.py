from django.core.management.base import BaseCommand

from annotate.services.demo import demo_seed


class Command(BaseCommand):
    help = "Create the demo accounts, dataset, checkpoints and generation jobs (idempotent)."

    def handle(self, *args, **options):
        result = demo_seed()
        self.stdout.write(self.style.SUCCESS(
            f"Demo data ready: dataset {result['dataset'].name}, {result['jobs_created']} generation job(s) queued."
        ))
        for username, password in result["accounts"].items():
            self.stdout.write(f"  {username:<11} password: {password}")
