"""The invariants the database itself enforces."""
import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotate.models import (
    Assignment, Checkpoint, ContrastivePromptSet, Dataset, HumanLabel, Image, Judgment, Prompt,
    RewardModel, RewardScore, Study, StudyItem,
)

pytestmark = pytest.mark.django_db


def violates(model, **fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        model.objects.create(**fields)


@pytest.fixture
def world(annotator):
    dataset = Dataset.objects.create(name="d")
    prompt = Prompt.objects.create(dataset=dataset, text="a cup", source_index=0)
    ckpt = Checkpoint.objects.create(name="c", backend="procedural")
    a = Image.objects.create(prompt=prompt, checkpoint=ckpt, seed=0, index=0)
    b = Image.objects.create(prompt=prompt, checkpoint=ckpt, seed=0, index=1)
    study = Study.objects.create(name="s", kind=Study.Kind.PAIRWISE)
    item = StudyItem.objects.create(study=study, prompt=prompt, image_a=a, image_b=b)
    return dict(dataset=dataset, prompt=prompt, ckpt=ckpt, a=a, b=b, study=study, item=item, user=annotator)


def test_one_image_per_checkpoint_prompt_seed_index(world):
    with pytest.raises(IntegrityError), transaction.atomic():
        Image.objects.create(prompt=world["prompt"], checkpoint=world["ckpt"], seed=0, index=0)
    other = Checkpoint.objects.create(name="other", backend="procedural")
    Image.objects.create(prompt=world["prompt"], checkpoint=other, seed=0, index=0)


def test_one_imported_image_per_prompt_seed_index(world):
    Image.objects.create(prompt=world["prompt"], seed=3, index=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Image.objects.create(prompt=world["prompt"], seed=3, index=1)


def test_an_image_file_comes_with_its_checksum(world):
    violates(Image, **dict(prompt=world["prompt"], seed=9, index=0, file="x.jpg"))
    violates(Image, **dict(prompt=world["prompt"], seed=9, index=0, sha256="ab", size_bytes=3))
    Image.objects.create(prompt=world["prompt"], seed=9, index=0, file="x.jpg", sha256="ab", size_bytes=3)


def test_prompt_index_is_unique_within_a_dataset(world):
    violates(Prompt, **dict(dataset=world["dataset"], text="another", source_index=0))


def test_label_values_and_slots(world):
    HumanLabel.objects.create(image=world["a"], slot=0, value=-1)
    violates(HumanLabel, **dict(image=world["a"], slot=0, value=1))
    violates(HumanLabel, **dict(image=world["a"], slot=1, value=2))


def test_checkpoint_backends_need_their_locations():
    violates(Checkpoint, **dict(name="x", backend="diffusers"))
    violates(Checkpoint, **dict(name="y", backend="lora", location="/w/lora.safetensors"))
    Checkpoint.objects.create(name="z", backend="lora", location="/w/l.safetensors", base_model="/w/sd15")


def test_reward_score_variants(world):
    model = RewardModel.objects.create(name="clip", kind="clip", location="/m/clip")
    pset = ContrastivePromptSet.objects.create(prompt=world["prompt"], source="rule_based", version="1",
                                               texts=["two cups"])
    RewardScore.objects.create(image=world["a"], reward_model=model, variant="raw", value=0.3)
    violates(RewardScore, **dict(image=world["a"], reward_model=model, variant="raw", value=0.4))
    violates(RewardScore, **dict(image=world["b"], reward_model=model, variant="raw", prompt_set=pset, value=0.4))
    violates(RewardScore, **dict(image=world["a"], reward_model=model, variant="textnorm", value=0.4))
    violates(RewardScore, **dict(image=world["a"], reward_model=model, variant="textnorm", prompt_set=pset,
                              normalize="minmax", scale=0, value=0.4))
    RewardScore.objects.create(image=world["a"], reward_model=model, variant="textnorm", prompt_set=pset,
                               normalize="minmax", scale=1.0, value=0.6)
    RewardScore.objects.create(image=world["a"], reward_model=model, variant="textnorm", prompt_set=pset,
                               normalize="minmax", scale=3.0, value=0.8)
    violates(RewardScore, **dict(image=world["a"], reward_model=model, variant="textnorm", prompt_set=pset,
                              normalize="minmax", scale=3.0, value=0.9))
    assert pset.prompt_set == ["a cup", "two cups"]


def test_study_parameters_are_checked():
    violates(Study, **dict(name="r0", kind="rating", redundancy=0))
    violates(Study, **dict(name="g", kind="rating", gold_share=1.5))


def test_pairwise_item_needs_two_distinct_images_once_per_study(world):
    violates(StudyItem, **dict(study=world["study"], prompt=world["prompt"], image_a=world["a"], image_b=world["a"]))
    violates(StudyItem, **dict(study=world["study"], prompt=world["prompt"], image_a=world["a"], image_b=world["b"]))
    violates(StudyItem, **dict(study=world["study"], prompt=world["prompt"], image_a=world["b"], image_b=world["a"],
                            is_gold=True))


def test_one_judgment_per_annotator_and_item_and_one_per_client_id(world):
    user, item = world["user"], world["item"]
    client_id = uuid.uuid4()
    Judgment.objects.create(item=item, annotator=user, client_id=client_id, choice="left", a_on_left=True)
    violates(Judgment, **dict(item=item, annotator=user, client_id=uuid.uuid4(), choice="right", a_on_left=True))
    other = StudyItem.objects.create(study=world["study"], prompt=world["prompt"], image_a=world["b"],
                                     image_b=Image.objects.create(prompt=world["prompt"], seed=1, index=0))
    violates(Judgment, **dict(item=other, annotator=user, client_id=client_id, choice="tie", a_on_left=False))
    violates(Judgment, **dict(item=other, annotator=user, client_id=uuid.uuid4(), choice="left"))
    violates(Judgment, **dict(item=other, annotator=user, client_id=uuid.uuid4(), choice="score", score=6))


def test_one_active_lease_per_annotator_and_item(world):
    now = timezone.now()
    lease = dict(item=world["item"], annotator=world["user"], leased_at=now, expires_at=now + timedelta(minutes=10))
    Assignment.objects.create(**lease)
    violates(Assignment, **dict(lease))
    Assignment.objects.filter(item=world["item"]).update(state="expired")
    Assignment.objects.create(**lease)
    violates(Assignment, **dict(lease, expires_at=now - timedelta(seconds=1), state="answered"))
