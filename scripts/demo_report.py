"""A report of the demo's pairwise study, answered by simulated annotators who prefer the
image that matches its prompt (the procedural ground truth), in a throwaway database.

    .venv/bin/python scripts/demo_report.py --out /tmp/demo-report.html [--annotators 12]

For the README's screenshot (scripts/screenshots.py --report PATH) and to see a report
without running a study.
"""
import argparse
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--annotators", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="calibra-demo-report-"))
    os.environ.update({"DJANGO_SETTINGS_MODULE": "webapp.settings.local", "CALIBRA_DATA_DIR": str(tmp),
                       "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}", "CELERY_TASK_ALWAYS_EAGER": "1",
                       "MEDIA_ROOT": str(tmp / "media"), "DEBUG": "0"})
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from annotate.models import Study, StudyItem
    from annotate.roles import ANNOTATORS
    from annotate.services.accounts import user_create_with_role
    from annotate.services.annotation import AnnotatorPaused, assignment_next, judgment_submit
    from annotate.services.demo import demo_seed
    from annotate.services.reports import report_render, study_report_data
    from annotate.services.studies import study_add_members, study_close

    demo_seed()
    study = Study.objects.get(kind="pairwise")
    users = [user_create_with_role(username=f"sim{i}", password=uuid.uuid4().hex, role=ANNOTATORS)
             for i in range(args.annotators)]
    study_add_members(study=study, usernames=[u.username for u in users])
    rng = random.Random(args.seed)
    truth = {i.pk: (i.image_a.metadata.get("matches_prompt"), i.image_b.metadata.get("matches_prompt"))
             for i in StudyItem.objects.filter(study=study).select_related("image_a", "image_b")}
    for user in users:
        try:
            answer_all(study, user, truth, rng, assignment_next, judgment_submit)
        except AnnotatorPaused:  # the gold checks stopped a careless simulated annotator
            pass
    study = study_close(study=study)  # done: what a report reader is usually handed
    args.out.write_bytes(report_render(study_report_data(study=study, rounds=1000, seed=args.seed), "html"))
    print(args.out)


def answer_all(study, user, truth, rng, assignment_next, judgment_submit) -> None:
    while (lease := assignment_next(study=study, annotator=user)) is not None:
        a_ok, b_ok = truth[lease.item_id]
        if a_ok == b_ok or rng.random() < 0.1:  # both right or both wrong, or a careless answer
            choice = "tie" if rng.random() < 0.9 else rng.choice(["left", "right"])
        else:
            choice = "left" if bool(a_ok) == lease.a_on_left else "right"
        judgment_submit(study=study, annotator=user, item_public_id=lease.item.public_id, lease_id=lease.pk,
                        client_id=uuid.uuid4(), choice=choice)


if __name__ == "__main__":
    main()
