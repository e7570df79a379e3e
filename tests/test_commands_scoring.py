"""score_images and best_of_n: a bad argument is named (flag and value) and leaves nothing
behind; an enqueued scoring job is sent only after its rows are committed. And the
file-system broker keeps its control folder (exchange tables) inside its own folder."""
import io
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from annotate.models import Checkpoint, Dataset, RewardModel, ScoringJob
from tests.workers.test_scoring import scene  # noqa: F401  (fixture)
from webapp.settings.celery import filesystem_broker_options

NEW_MODEL = ["--reward-model", "fresh", "--kind", "clip", "--location", "someone/clip", "--allow-download"]


def score(*args):
    call_command("score_images", *args, stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("flag, value, what", [("--dataset", "nope", "dataset"),
                                                ("--checkpoint", "nope", "checkpoint"),
                                                ("--generation-job", "987", "generation job")])
def test_score_images_names_a_missing_target_and_registers_no_reward_model(flag, value, what):
    with pytest.raises(CommandError) as caught:
        score(*NEW_MODEL, flag, value)
    message = str(caught.value)
    assert f"{flag} " in message and value in message and f"no such {what}" in message
    assert "Nothing was written." in message
    assert not RewardModel.objects.exists() and not ScoringJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_score_images_rolls_back_the_new_reward_model_when_the_job_is_refused(scene):  # noqa: F811
    ds, ckpt = scene
    with pytest.raises(CommandError, match=r"--batch-size: must be a positive integer.*\nNothing was written"):
        score(*NEW_MODEL, "--checkpoint", ckpt.name, "--variants", "raw", "--batch-size", "0")
    assert not RewardModel.objects.exists() and not ScoringJob.objects.exists()
    with pytest.raises(CommandError, match=r"--reward-model 'other': not registered"):
        score("--reward-model", "other", "--dataset", ds.name)


@pytest.mark.django_db(transaction=True)
def test_score_images_enqueues_after_commit(scene, monkeypatch):  # noqa: F811
    from workers.scoring_tasks import scoring_job_run

    ds, ckpt = scene
    sent = []

    def delay(job_id):  # the worker must find the job: committed, outside any transaction
        assert not connection.in_atomic_block
        sent.append((job_id, ScoringJob.objects.filter(pk=job_id, reward_model__name="fresh").exists()))

    monkeypatch.setattr(scoring_job_run, "delay", delay)
    out = io.StringIO()
    call_command("score_images", *NEW_MODEL, "--checkpoint", ckpt.name, "--variants", "raw", "--enqueue", stdout=out)
    job = ScoringJob.objects.get()
    assert sent == [(job.id, True)]
    assert f"scoring job {job.id} enqueued (12 images)" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_best_of_n_names_each_missing_argument():
    Checkpoint.objects.create(name="parent", backend="procedural")
    RewardModel.objects.create(name="rm", kind="clip", location="-")
    Dataset.objects.create(name="ds")
    good = {"--parent": "parent", "--reward-model": "rm", "--dataset": "ds"}
    for flag, what in (("--parent", "checkpoint"), ("--reward-model", "reward model"), ("--dataset", "dataset")):
        args = {**good, flag: "missing"}
        with pytest.raises(CommandError) as caught:
            call_command("best_of_n", *[x for kv in args.items() for x in kv], "--n", "2", stdout=io.StringIO())
        assert str(caught.value).startswith(f"{flag} 'missing': no such {what}")
    with pytest.raises(CommandError, match=r"^--parent: checkpoint 'parent' has no images"):
        call_command("best_of_n", *[x for kv in good.items() for x in kv], "--n", "2", stdout=io.StringIO())
    assert not Checkpoint.objects.filter(backend="best_of_n").exists()


def test_filesystem_broker_keeps_its_control_folder_inside_its_folder(tmp_path, monkeypatch):
    from kombu import Connection, Exchange, Queue

    options = filesystem_broker_options(tmp_path / "broker")
    assert options["control_folder"] == str(tmp_path / "broker" / "control")
    assert (tmp_path / "broker" / "control").is_dir()

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # kombu's default control folder is ./control
    # A name of its own: kombu remembers declared exchanges per process.
    name = f"control-test-{uuid.uuid4().hex[:8]}"
    exchange = Exchange(name, type="direct")
    with Connection("filesystem://", transport_options=options) as conn:
        producer = conn.Producer()
        producer.publish({"x": 1}, exchange=exchange, routing_key=name, declare=[Queue(name, exchange, name)])
    assert not (cwd / "control").exists()
    assert (tmp_path / "broker" / "control" / f"{name}.exchange").is_file()


def test_settings_give_the_broker_a_control_folder():
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        folder = settings.CELERY_BROKER_TRANSPORT_OPTIONS["control_folder"]
        assert folder.endswith("control") and folder != "control"
