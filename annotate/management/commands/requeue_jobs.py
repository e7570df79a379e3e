from django.core.management.base import BaseCommand, CommandError

from annotate.services.jobs import REQUEUE_AFTER_S, jobs_requeue_stale


class Command(BaseCommand):
    help = ("Send again the generation jobs, scoring jobs and reports that are queued but whose broker "
            "message was lost or never sent (the broker was down). Workers do this on start and every minute; "
            "run it by hand or from cron where they cannot. Safe to repeat: the tasks do only what is missing.")

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=float, default=REQUEUE_AFTER_S, metavar="SECONDS",
                            help=f"only rows queued at least this long ago (default {REQUEUE_AFTER_S:g})")
        parser.add_argument("--running", action="store_true",
                            help="running rows too: after a worker died on a broker that does not redeliver "
                                 "its task (the file-system broker)")
        parser.add_argument("--force", action="store_true",
                            help="send even while messages wait in the queue (one may be the row's own)")

    def handle(self, *args, **options):
        if options["older_than"] < 0:
            raise CommandError("--older-than: must be >= 0")
        result = jobs_requeue_stale(older_than=options["older_than"], include_running=options["running"],
                                    force=options["force"])
        for kind, ids in result.sent.items():
            line = f"{kind}: {len(ids)} sent again" + (f" ({', '.join(map(str, ids))})" if ids else "")
            if kind in result.waiting:
                line += (f"; not sent: {result.waiting[kind]} message(s) wait in its queue"
                         " (--force sends anyway)")
            self.stdout.write(line)
        if result.broker_error:
            raise CommandError(f"the broker is unavailable ({result.broker_error}); nothing more was sent")
