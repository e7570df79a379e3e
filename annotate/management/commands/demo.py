import signal
import subprocess
import sys

from django.core.management import call_command
from django.core.management.base import BaseCommand

from annotate.services.demo import DEMO_BACKENDS


class Command(BaseCommand):
    help = "Seed the demo, start a Celery worker and serve the site (Ctrl-C or SIGTERM stops both)."

    def add_arguments(self, parser):
        parser.add_argument("--addrport", default="127.0.0.1:8000")
        parser.add_argument("--backend", choices=DEMO_BACKENDS, default="procedural",
                            help="tiny-diffusers also runs a tiny random Stable Diffusion pipeline through the worker")

    def handle(self, *args, addrport: str, backend: str, **options):
        # SIGTERM (a supervisor, `docker stop`, `kill`) ends the demo as Ctrl-C does: through the
        # `finally` below, which stops the worker too (by default SIGTERM skips it).
        def _stop(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGHUP, _stop)
        worker = subprocess.Popen([
            sys.executable, "-m", "celery", "-A", "webapp", "worker", "--queues", "gpu,cpu",
            "--pool", "solo", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        ])
        try:
            call_command("seed_demo", backend=backend)
            self.stdout.write(self.style.SUCCESS(f"Serving http://{addrport}/ (log in as researcher or annotator)"))
            call_command("runserver", addrport, use_reloader=False)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
