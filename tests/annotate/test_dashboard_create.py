"""New studies from the browser: preview writes nothing and says what the study takes;
create makes a draft with its members; bad input names the field; researchers only."""
import pytest
from django.urls import reverse

from annotate.models import (
    Checkpoint, ContrastivePromptSet, Image, RewardModel, RewardScore, Study, StudyMembership,
)
from tests.factories import annotators, make_images

pytestmark = pytest.mark.django_db
URL = reverse("study-create")


@pytest.fixture
def logged_in(client, researcher):
    client.force_login(researcher)
    return client


def test_annotators_and_strangers_cannot_make_studies(client, annotator):
    dataset, checkpoints = make_images()
    data = {"kind": "pairwise", "name": "x", "dataset": dataset.id, "checkpoints": [c.id for c in checkpoints],
            "pairing": "matched", "redundancy": 3, "gold_share": 0, "item_order": "closest", "action": "create"}
    assert client.get(URL).status_code == 302  # to the login page
    client.force_login(annotator)
    assert client.get(URL).status_code == 403
    assert client.post(URL, data).status_code == 403
    assert not Study.objects.exists()


def test_a_pairwise_study_is_previewed_then_made_as_a_draft_with_its_members(logged_in):
    dataset, checkpoints = make_images(prompts=5, per_prompt=2)
    people = annotators(2)
    data = {"kind": "pairwise", "name": "A vs B", "dataset": dataset.id, "checkpoints": [c.id for c in checkpoints],
            "pairing": "matched", "redundancy": 3, "gold_share": 0, "item_order": "closest",
            "members": [u.id for u in people], "action": "preview"}
    page = logged_in.post(URL, data)
    assert page.status_code == 200
    preview = page.context["preview"]
    assert (preview["items"], preview["judgments"], preview["members"]) == (10, 30, 2)  # 5 prompts x 2 matched
    assert b'id="preview-items">10<' in page.content and b'id="preview-judgments">30<' in page.content
    assert not Study.objects.exists()  # a preview writes nothing
    made = logged_in.post(URL, data | {"action": "create"})
    study = Study.objects.get()
    assert made.status_code == 302 and made["Location"] == reverse("study-detail", args=[study.id])
    assert (study.kind, study.status, study.item_count, study.redundancy) == ("pairwise", "draft", 10, 3)
    assert set(StudyMembership.objects.values_list("annotator__username", flat=True)) == {"ann0", "ann1"}


def test_bad_input_names_the_field_and_writes_nothing(logged_in):
    dataset, checkpoints = make_images()
    page = logged_in.post(URL, {"kind": "pairwise", "name": "", "dataset": dataset.id,
                                "checkpoints": [checkpoints[0].id], "pairing": "matched", "redundancy": 0,
                                "gold_share": 0, "item_order": "closest", "action": "create"})
    assert page.status_code == 400
    errors = page.context["form"].errors
    assert set(errors) == {"name", "checkpoints", "redundancy"}
    assert "two or more" in errors["checkpoints"][0]
    no_images = make_images(prompts=0)[0]
    page = logged_in.post(URL, {"kind": "pairwise", "name": "x", "dataset": no_images.id,
                                "checkpoints": [c.id for c in checkpoints], "pairing": "matched", "redundancy": 1,
                                "gold_share": 0, "item_order": "closest", "action": "create"})
    assert page.status_code == 400 and "no images" in page.context["error"]
    assert not Study.objects.exists()


def test_a_rating_study_of_a_datasets_own_images(logged_in):
    dataset, _ = make_images(prompts=3, per_prompt=1, checkpoints=())
    for k, prompt in enumerate(dataset.prompts.all()):
        Image.objects.create(prompt=prompt, seed=0, index=0, file=f"tia2/{k}.jpg", source_name=f"{k}.jpg",
                             sha256="0" * 64, size_bytes=1)
    page = logged_in.post(URL, {"kind": "rating", "name": "TIA2 ratings", "dataset": dataset.id,
                                "rating_scale": "binary", "redundancy": 3, "gold_share": 0,
                                "item_order": "closest", "action": "create"})
    study = Study.objects.get()
    assert page.status_code == 302 and (study.kind, study.item_count) == ("rating", 3)


def test_a_best_of_n_study_compares_the_raw_and_textnorm_picks_where_they_differ(logged_in):
    dataset, (parent,) = make_images(prompts=4, per_prompt=2, checkpoints=("parent",))
    model = RewardModel.objects.create(name="pick", kind="pickscore", location="-")
    rows = []
    for p, prompt in enumerate(dataset.prompts.order_by("source_index")):
        prompt_set = ContrastivePromptSet.objects.create(prompt=prompt, source="rule_based", version="r1",
                                                         texts=["x"])
        first, second = Image.objects.filter(prompt=prompt, checkpoint=parent).order_by("index")
        # Raw always picks the first image; TextNorm picks the second for prompts 0 and 1.
        for image, raw, tn in ((first, 0.9, 0.2 if p < 2 else 0.8), (second, 0.1, 0.7 if p < 2 else 0.3)):
            rows += [RewardScore(image=image, reward_model=model, variant="raw", value=raw),
                     RewardScore(image=image, reward_model=model, variant="textnorm", prompt_set=prompt_set,
                                 normalize="minmax", value=tn)]
    RewardScore.objects.bulk_create(rows)
    data = {"kind": "best_of_n", "name": "best of 2", "dataset": dataset.id, "parent": parent.id,
            "reward_model": model.id, "n": 2, "prompt_set_source": "rule_based", "prompt_set_version": "",
            "normalize": "minmax", "scale": 1.0, "temperature": 1.0, "redundancy": 5, "gold_share": 0,
            "item_order": "closest", "action": "preview"}
    preview = logged_in.post(URL, data).context["preview"]
    assert (preview["items"], preview["judgments"], preview["identical_picks"]) == (2, 10, 2)
    assert not Checkpoint.objects.filter(backend="best_of_n").exists()  # rolled back
    assert logged_in.post(URL, data | {"action": "create"}).status_code == 302
    study = Study.objects.get()
    assert study.item_count == 2 and study.checkpoints.count() == 2
    assert sorted(study.checkpoints.values_list("config__variant", flat=True)) == ["raw", "textnorm"]
    refused = logged_in.post(URL, data | {"n": 3, "name": "best of 3"})
    assert refused.status_code == 400 and refused.context["error"].startswith("n: 4 prompt(s) have fewer than 3")
