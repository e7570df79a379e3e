"""Making studies (annotate/services/studies.py)."""
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from PIL import Image as PILImage

from annotate.models import Checkpoint, Dataset, Image, StudyItem, StudyMembership
from annotate.services.crowd import crowd_worker_join
from annotate.services.studies import (
    StudyError, study_add_members, study_crowd_link_set, study_create_pairwise, study_create_rating, study_open,
)
from tests.factories import make_images

pytestmark = pytest.mark.django_db


def test_pairs_that_show_one_picture_twice_are_left_out():
    """Two checkpoints that made the same image (best-of-n picks that agree, a copy): the pair
    asks for nothing and would only add ties."""
    dataset, checkpoints = make_images(prompts=4, per_prompt=2)
    twin = Image.objects.get(checkpoint=checkpoints[0], prompt__source_index=0, index=0)
    Image.objects.filter(checkpoint=checkpoints[1], prompt__source_index=0, index=0).update(sha256=twin.sha256)
    Image.objects.filter(checkpoint=checkpoints[1], prompt__source_index=1, index=1).update(
        file=Image.objects.get(checkpoint=checkpoints[0], prompt__source_index=1, index=1).file.name)
    study = study_create_pairwise(name="s", dataset=dataset, checkpoints=checkpoints, pairing="matched")
    assert study.items.count() == study.item_count == 8 - 2 and study.identical_pairs == 2
    assert all(item.image_a.sha256 != item.image_b.sha256 and item.image_a.file != item.image_b.file
               for item in study.items.select_related("image_a", "image_b"))
    Image.objects.filter(checkpoint=checkpoints[1]).update(sha256=twin.sha256)
    Image.objects.filter(checkpoint=checkpoints[0]).update(sha256=twin.sha256)
    with pytest.raises(StudyError, match="same picture twice"):
        study_create_pairwise(name="t", dataset=dataset, checkpoints=checkpoints, pairing="random")


def test_matched_pairs_share_seed_and_index_and_sides_are_mixed():
    dataset, checkpoints = make_images(prompts=10, per_prompt=3)
    study = study_create_pairwise(name="s", dataset=dataset, checkpoints=checkpoints, pairing="matched")
    items = list(study.items.select_related("image_a", "image_b"))
    assert len(items) == 30
    for item in items:
        assert (item.image_a.seed, item.image_a.index) == (item.image_b.seed, item.image_b.index)
        assert item.image_a.prompt_id == item.image_b.prompt_id == item.prompt_id
        assert item.image_a.checkpoint_id != item.image_b.checkpoint_id
    a_is_alpha = sum(item.image_a.checkpoint == checkpoints[0] for item in items)
    assert 5 < a_is_alpha < 25  # which checkpoint is "a" is drawn per item
    assert study.question and study.completion_code and list(study.checkpoints.all()) == checkpoints


def test_random_pairing_draws_one_pair_per_prompt_and_three_checkpoints_give_three_pairings():
    dataset, checkpoints = make_images(prompts=4, per_prompt=3, checkpoints=("x1", "x2", "x3"))
    study = study_create_pairwise(name="s", dataset=dataset, checkpoints=checkpoints, pairing="random", seed=7)
    assert study.items.count() == 3 * 4
    pairs = {frozenset((i.image_a.checkpoint_id, i.image_b.checkpoint_id)) for i in study.items.all()}
    assert len(pairs) == 3


def test_gold_items_have_a_known_answer():
    dataset, checkpoints = make_images(prompts=10, per_prompt=2,
                                       truth=lambda ckpt, p, i: ckpt == "alpha-ckpt" or p % 2 == 0)
    study = study_create_pairwise(name="s", dataset=dataset, checkpoints=checkpoints, gold_share=0.25)
    gold = list(study.items.filter(is_gold=True).select_related("image_a__checkpoint"))
    assert len(gold) == 5  # 25% of 20, drawn from the 10 items with a known answer
    for item in gold:
        a_is_alpha = item.image_a.checkpoint.name == "alpha-ckpt"
        assert item.gold_answer == ("a" if a_is_alpha else "b")
        assert item.prompt.source_index % 2 == 1


def test_pairwise_needs_two_checkpoints_with_images():
    dataset, checkpoints = make_images(prompts=1)
    with pytest.raises(StudyError, match="two or more"):
        study_create_pairwise(name="s", dataset=dataset, checkpoints=checkpoints[:1])
    empty = Dataset.objects.create(name="empty")
    with pytest.raises(StudyError, match="no images"):
        study_create_pairwise(name="s", dataset=empty, checkpoints=checkpoints)


def jpeg(path):
    PILImage.new("RGB", (8, 8), (10, 20, 30)).save(path, format="JPEG")


def test_rating_study_from_imported_tia2_images_with_gold_from_unanimous_labels(small_tia2, tmp_path):
    images = tmp_path / "images" / "counting"
    images.mkdir(parents=True)
    for name in ("image_0_0_0.jpg", "image_0_0_1.jpg", "image_0_0_2.jpg", "image_1_0_0.jpg"):
        jpeg(images / name)
    call_command("import_tia2", str(small_tia2), "--images", str(tmp_path / "images"), stdout=io.StringIO())
    dataset = Dataset.objects.get(name="tia2-counting")
    study = study_create_rating(name="tia2 rating", dataset=dataset, gold_share=1.0)
    assert study.items.count() == 4  # images without a file cannot be shown
    for item in study.items.select_related("image_a"):
        labels = list(item.image_a.human_labels.values_list("value", flat=True))
        if labels.count(1) == 3:
            assert item.is_gold and item.gold_answer == "aligned"
        elif labels.count(0) == 3:
            assert item.is_gold and item.gold_answer == "not_aligned"
        else:
            assert not item.is_gold


def test_open_needs_items_and_members_must_exist(annotator):
    dataset, checkpoints = make_images(prompts=1)
    study = study_create_pairwise(name="s", dataset=dataset, checkpoints=checkpoints)
    with pytest.raises(StudyError, match="nobody"):
        study_add_members(study=study, usernames=["ann", "nobody"])
    assert not StudyMembership.objects.exists()
    study_add_members(study=study, usernames=["ann", "ann"])
    assert study.memberships.count() == 1
    StudyItem.objects.all().delete()
    with pytest.raises(StudyError, match="without items"):
        study_open(study=study)


def test_crowd_worker_gets_an_account_limited_to_the_study():
    dataset, checkpoints = make_images(prompts=1)
    study = study_open(study=study_create_pairwise(name="s", dataset=dataset, checkpoints=checkpoints))
    with pytest.raises(StudyError, match="invited annotators only"):  # the link is off by default
        crowd_worker_join(study=study, worker_id="5f1a2b3c", browser_secret="b")
    with pytest.raises(StudyError, match="needs the number of items each worker answers"):
        study_crowd_link_set(study=study, enabled=True)  # a completion code pays for a quota of answers
    study.items_per_annotator = 1
    study_crowd_link_set(study=study, enabled=True)
    user = crowd_worker_join(study=study, worker_id="5f1a2b3c", session_id="sess-1", browser_secret="b")
    again = crowd_worker_join(study=study, worker_id="5f1a2b3c", session_id="sess-2", browser_secret="b")
    assert user == again and not user.has_usable_password()
    membership = StudyMembership.objects.get(annotator=user)
    assert (membership.study, membership.external_worker_id, membership.external_session_id) == (
        study, "5f1a2b3c", "sess-2")
    assert get_user_model().objects.get(pk=user.pk).study_memberships.count() == 1
    with pytest.raises(StudyError, match="PROLIFIC_PID"):
        crowd_worker_join(study=study, worker_id="bad id; drop", browser_secret="b")


def test_images_of_checkpoints_without_files_are_left_out():
    dataset, checkpoints = make_images(prompts=2, per_prompt=1)
    Image.objects.filter(checkpoint=checkpoints[1], prompt__source_index=0).update(file="", sha256="", size_bytes=None)
    study = study_create_pairwise(name="s", dataset=dataset, checkpoints=checkpoints)
    assert study.items.count() == 1
    assert Checkpoint.objects.count() == 2
