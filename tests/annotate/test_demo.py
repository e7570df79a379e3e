import io

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from annotate.models import GenerationJob, Image, RewardScore, ScoringJob, Study, StudyItem
from annotate.roles import is_researcher

pytestmark = pytest.mark.django_db(transaction=True)


def test_seed_demo_makes_accounts_images_and_open_studies_once(client):
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert "researcher-demo-pass" in out.getvalue() and "annotator-demo-pass" in out.getvalue()
    researcher = authenticate(username="researcher", password="researcher-demo-pass")
    annotator = authenticate(username="annotator", password="annotator-demo-pass")
    assert is_researcher(researcher) and researcher.is_staff
    assert not is_researcher(annotator) and not annotator.is_staff
    assert GenerationJob.objects.filter(status="succeeded").count() == 2
    n_images = Image.objects.count()
    assert n_images == 2 * 28 * 4
    # Scored through the worker after generation: raw and TextNorm (rule-based prompt sets).
    assert ScoringJob.objects.filter(status="succeeded", done_images=28 * 4).count() == 2
    assert RewardScore.objects.filter(variant="raw").count() == n_images
    textnorm = RewardScore.objects.filter(variant="textnorm")
    assert textnorm.count() == n_images and all(0.0 < v < 1.0 for v in textnorm.values_list("value", flat=True))
    pairwise = Study.objects.get(kind="pairwise")
    rating = Study.objects.get(kind="rating")
    assert pairwise.status == rating.status == "open"
    assert pairwise.items.count() == 28 * 4 and rating.items.count() == n_images
    assert pairwise.memberships.filter(annotator=annotator).exists()
    gold = StudyItem.objects.filter(study=pairwise, is_gold=True)
    assert gold.count() == round(0.1 * 112)
    assert set(gold.values_list("gold_answer", flat=True)) <= {"a", "b"}
    call_command("seed_demo", stdout=io.StringIO())
    assert GenerationJob.objects.count() == 2 and Image.objects.count() == n_images
    assert ScoringJob.objects.count() == 2 and RewardScore.objects.count() == 2 * n_images
    assert Study.objects.count() == 2
    client.force_login(researcher)
    dataset_page = client.get(f"/datasets/{GenerationJob.objects.first().dataset_id}/")
    assert dataset_page.status_code == 200 and "three cups" in dataset_page.content.decode()
    client.force_login(annotator)
    home = client.get("/").content.decode()
    assert "Demo: which image matches?" in home and "Demo: does it match?" in home
    # Each study's instructions fit its task: a tie is for two images, never for one.
    assert "tie" in pairwise.instructions and "tie" not in rating.instructions
    assert "yes" in rating.instructions


def test_sigterm_stops_the_demo_and_its_worker(monkeypatch):
    """`docker stop` or a supervisor sends SIGTERM: the worker the demo started goes too."""
    import os
    import signal

    from annotate.management.commands import demo

    class Worker:
        stopped = False

        def __init__(self, *args, **kwargs):
            pass

        def terminate(self):
            Worker.stopped = True

        def wait(self, timeout=None):
            return 0

    def serve(name, *args, **kwargs):
        if name == "runserver":
            os.kill(os.getpid(), signal.SIGTERM)  # delivered while "serving"
            raise AssertionError("SIGTERM did not stop the demo")

    monkeypatch.setattr(demo.subprocess, "Popen", Worker)
    monkeypatch.setattr(demo, "call_command", serve)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as stopped:
            demo.Command().handle(addrport="127.0.0.1:0", backend="procedural")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert stopped.value.code == 128 + signal.SIGTERM and Worker.stopped
