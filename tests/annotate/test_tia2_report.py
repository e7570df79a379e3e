import io
import json

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from annotate.models import ContrastivePromptSet, HumanLabel, Image, RewardModel, RewardScore

SPEC = {  # SPEC.md section 1
    "comprehensive": {"prompts": 100, "images": 5000, "missing": 133, "majority": 2361, "kappa": 0.614, "kept": 84},
    "counting": {"prompts": 150, "images": 7500, "missing": 0, "majority": 3245, "kappa": 0.684, "kept": 146},
    "composition": {"prompts": 300, "images": 15000, "missing": 1917, "majority": 5845, "kappa": 0.221, "kept": 295},
}


def report(*args) -> dict:
    out = io.StringIO()
    call_command("tia2_report", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def test_without_tia2_it_says_how_to_import(db):
    with pytest.raises(CommandError, match="import_tia2"):
        call_command("tia2_report", stdout=io.StringIO())


@pytest.mark.django_db
def test_tia2_report_reproduces_the_spec_table_and_scores_reward_models(tia2_root):
    call_command("import_tia2", str(tia2_root), stdout=io.StringIO())
    got = {c["category"]: c for c in report()["categories"]}
    for category, want in SPEC.items():
        c = got[category]
        assert (c["prompts"], c["images"], c["labels_missing"], c["majority_positive_images"]) == (
            want["prompts"], want["images"], want["missing"], want["majority"])
        assert round(c["fleiss_kappa"], 3) == want["kappa"]
    assert report()["reward_models"] == []

    # A reward that follows the human labels (with a little deterministic noise) on every image,
    # and a TextNorm column on the counting images only.
    model = RewardModel.objects.create(name="oracle", kind="clip", location="-")
    labels = {}
    for image_id, value in HumanLabel.objects.values_list("image_id", "value"):
        labels[image_id] = labels.get(image_id, 0) + (value == 1)
    rng = np.random.default_rng(0)
    RewardScore.objects.bulk_create([
        RewardScore(image_id=i, reward_model=model, variant="raw", value=n + 0.1 * rng.random())
        for i, n in labels.items()], batch_size=5000)
    counting = list(Image.objects.filter(prompt__category="counting").values_list("id", "prompt_id"))
    sets = dict(ContrastivePromptSet.objects.filter(prompt__category="counting").values_list("prompt_id", "id"))
    RewardScore.objects.bulk_create([
        RewardScore(image_id=i, reward_model=model, variant="textnorm", prompt_set_id=sets[p], normalize="minmax",
                    scale=1.0, value=float(rng.random())) for i, p in counting], batch_size=5000)

    full = report("--per-prompt")
    columns = {m["score"]: m for m in full["reward_models"]}
    raw = columns["oracle raw"]
    assert raw["images_scored"] == 27500
    by_category = {c["category"]: c for c in raw["categories"]}
    for category, want in SPEC.items():
        c = by_category[category]
        assert c["n_kept"] == want["kept"] and c["n_kept"] + c["n_dropped"] == want["prompts"]
        assert c["means"]["oracle raw"]["auroc"] == pytest.approx(1.0)  # ranks by positive labels
    textnorm = next(m for name, m in columns.items() if name.startswith("oracle textnorm"))
    assert (textnorm["images_scored"], textnorm["images_total"]) == (7500, 27500)
    tn = {c["category"]: c for c in textnorm["categories"]}
    assert set(tn) == set(SPEC)  # every category, the unscored ones saying so
    assert 0.4 < tn["counting"]["means"][textnorm["score"]]["auroc"] < 0.6  # random scores
    assert "not scored" not in tn["counting"]["dropped"]
    for category in ("composition", "comprehensive"):
        assert tn[category]["n_kept"] == 0 and tn[category]["dropped"] == {"not scored": SPEC[category]["prompts"]}
        assert tn[category]["n_dropped"] == tn[category]["n_prompts"] == SPEC[category]["prompts"]
    prompt = raw["prompts"][0]
    assert prompt["text"] and 0.0 <= prompt["positive_rate"] <= 1.0
    assert sum(not p["kept"] for p in raw["prompts"]) == 550 - 84 - 146 - 295

    text = io.StringIO()
    call_command("tia2_report", stdout=text)
    assert "oracle raw" in text.getvalue() and "0.614" in text.getvalue() and "dropped" in text.getvalue()

    # Some TextNorm scores go missing: a prompt with only part of its images scored is dropped
    # ("partly scored"), not ranked over the images that happen to have a score.
    kept_before = tn["counting"]["n_kept"]
    victims = [p for p in full["reward_models"][0]["prompts"] if p["category"] == "counting" and p["kept"]][:3]
    first = Image.objects.filter(prompt_id__in=[v["prompt"] for v in victims]).order_by("prompt_id", "id")
    doomed = [ids[0] for ids in _by_prompt(first)]
    RewardScore.objects.filter(image_id__in=doomed, variant="textnorm").delete()
    again = {m["score"]: m for m in report()["reward_models"]}[textnorm["score"]]
    counting_now = next(c for c in again["categories"] if c["category"] == "counting")
    assert counting_now["dropped"]["partly scored"] == 3 and counting_now["n_kept"] == kept_before - 3
    assert again["images_scored"] == 7500 - 3


def _by_prompt(images) -> list[list[int]]:
    out: dict = {}
    for image in images:
        out.setdefault(image.prompt_id, []).append(image.id)
    return list(out.values())


@pytest.mark.django_db
def test_textnorm_scores_of_two_prompt_set_versions_get_a_column_each():
    """Two language-model versions of the sets of one reward model used to share a column,
    the later rows overwriting the earlier per image; the imported sets (a version per
    prompt) keep their single column and its name."""
    from annotate.models import Dataset, Prompt

    from annotate.services.tia2_report import tia2_report

    ds = Dataset.objects.create(name="tia2-mini", source=Dataset.Source.TIA2)
    model = RewardModel.objects.create(name="rm", kind="clip", location="-")
    aligned, images = {}, []
    for p in range(2):
        prompt = Prompt.objects.create(dataset=ds, text=f"{p + 2} cups", category="counting", source_index=p)
        sets = {v: ContrastivePromptSet.objects.create(prompt=prompt, source="language_model", version=v,
                                                       texts=[f"{p + 3} cups"]) for v in ("lm-aaaa", "lm-bbbb")}
        sets["imported"] = ContrastivePromptSet.objects.create(prompt=prompt, source="imported",
                                                               version=f"hash-{p}", texts=["a cup"])
        for k in range(4):
            image = Image.objects.create(prompt=prompt, seed=k, index=0, source_name=f"image_{p}_{k}_0.jpg")
            aligned[image.id] = k % 2  # two aligned images per prompt
            HumanLabel.objects.bulk_create([HumanLabel(image=image, slot=s, value=k % 2) for s in range(3)])
            images.append((image.id, sets))
    RewardScore.objects.bulk_create([
        RewardScore(image_id=i, reward_model=model, variant="textnorm", prompt_set=sets[version], normalize="minmax",
                    scale=1.0, value=value)
        for i, sets in images
        for version, value in (("lm-aaaa", aligned[i] + 0.01 * i), ("lm-bbbb", -aligned[i] - 0.01 * i),
                               ("imported", 0.5 + aligned[i]))])

    columns = {m["score"]: m for m in tia2_report()["reward_models"]}
    assert sorted(columns) == ["rm textnorm (imported prompt sets, minmax s=1)",
                               "rm textnorm (language_model prompt sets lm-aaaa, minmax s=1)",
                               "rm textnorm (language_model prompt sets lm-bbbb, minmax s=1)"]

    def auroc(name):
        assert columns[name]["images_scored"] == 8
        return columns[name]["categories"][0]["means"][name]["auroc"]

    assert auroc("rm textnorm (language_model prompt sets lm-aaaa, minmax s=1)") == pytest.approx(1.0)
    assert auroc("rm textnorm (language_model prompt sets lm-bbbb, minmax s=1)") == pytest.approx(0.0)
    assert auroc("rm textnorm (imported prompt sets, minmax s=1)") == pytest.approx(1.0)


@pytest.mark.django_db
def test_a_reimported_prompt_set_gets_a_column_of_its_own():
    from annotate.models import Dataset, Prompt

    from annotate.services.tia2_report import tia2_report

    ds = Dataset.objects.create(name="tia2-mini", source=Dataset.Source.TIA2)
    model = RewardModel.objects.create(name="rm", kind="clip", location="-")
    prompt = Prompt.objects.create(dataset=ds, text="two cups", category="counting", source_index=0)
    first = ContrastivePromptSet.objects.create(prompt=prompt, source="imported", version="h1", texts=["a cup"])
    second = ContrastivePromptSet.objects.create(prompt=prompt, source="imported", version="h2", texts=["3 cups"])
    rows = []
    for k in range(4):
        image = Image.objects.create(prompt=prompt, seed=k, index=0)
        HumanLabel.objects.bulk_create([HumanLabel(image=image, slot=s, value=k % 2) for s in range(3)])
        rows += [RewardScore(image=image, reward_model=model, variant="textnorm", prompt_set=first,
                             normalize="none", temperature=2.0, value=k % 2),
                 RewardScore(image=image, reward_model=model, variant="textnorm", prompt_set=second,
                             normalize="none", temperature=2.0, value=-(k % 2))]
    RewardScore.objects.bulk_create(rows)
    columns = {m["score"]: m for m in tia2_report()["reward_models"]}
    assert sorted(columns) == ["rm textnorm (imported prompt sets import 1, none tau=2)",
                               "rm textnorm (imported prompt sets import 2, none tau=2)"]
    means = [columns[n]["categories"][0]["means"][n]["auroc"] for n in sorted(columns)]
    assert means == [pytest.approx(1.0), pytest.approx(0.0)]


@pytest.mark.django_db
def test_an_ensemble_of_reward_models_gets_its_own_row_over_the_images_all_of_them_scored():
    """SPEC section 2, item 5, from the command: mean and uncertainty-regularised ensembles
    of two reward models' TextNorm scores."""
    from annotate.models import Dataset, Prompt
    from annotate.services.tia2_report import Ensemble, _ensemble_column, _score_columns

    ds = Dataset.objects.create(name="tia2-mini", source=Dataset.Source.TIA2)
    a, b = (RewardModel.objects.create(name=n, kind="clip", location="-") for n in ("pick", "imagereward"))
    rows, ids = [], []
    for p in range(2):
        prompt = Prompt.objects.create(dataset=ds, text=f"{p + 2} cups", category="counting", source_index=p)
        sets = ContrastivePromptSet.objects.create(prompt=prompt, source="rule_based", version="rules-1",
                                                   texts=[f"{p + 3} cups"])
        for k in range(4):
            image = Image.objects.create(prompt=prompt, seed=k, index=0, source_name=f"image_{p}_{k}_0.jpg")
            HumanLabel.objects.bulk_create([HumanLabel(image=image, slot=s, value=k % 2) for s in range(3)])
            ids.append(image.id)
            rows.append(RewardScore(image=image, reward_model=a, variant="textnorm", prompt_set=sets,
                                    normalize="minmax", value=0.2 + 0.6 * (k % 2)))
            if (p, k) != (1, 3):  # one image the second model did not score
                rows.append(RewardScore(image=image, reward_model=b, variant="textnorm", prompt_set=sets,
                                        normalize="minmax", value=0.4 + 0.2 * (k % 2)))
    RewardScore.objects.bulk_create(rows)

    out = report("--ensemble", "pick,imagereward", "--method", "uncertainty", "--lam", "0.5")
    rows = {m["score"]: m for m in out["reward_models"]}
    name = "ensemble uncertainty lambda=0.5 of TextNorm (pick, imagereward)"
    assert rows[name]["images_scored"] == 7
    assert rows[name]["categories"][0]["means"][name]["auroc"] == pytest.approx(1.0)
    # mean 0.3 + 0.4 a; population variance ((p_a - p_b) / 2)^2 = 0.01 for aligned and not.
    column = _ensemble_column(_score_columns(), Ensemble(("pick", "imagereward"), "uncertainty", 0.5))
    aligned = {i: n % 2 for n, i in enumerate(ids)}
    assert column == pytest.approx({i: 0.3 + 0.4 * aligned[i] - 0.5 * 0.01 for i in ids[:-1]})
    mean = _ensemble_column(_score_columns(), Ensemble(("pick", "imagereward")))
    assert mean == pytest.approx({i: 0.3 + 0.4 * aligned[i] for i in ids[:-1]})
    with pytest.raises(CommandError, match="ensemble: needs at least two reward models"):
        report("--ensemble", "pick")
    with pytest.raises(CommandError, match="ensemble: 'hps' has no TextNorm scores"):
        report("--ensemble", "pick,hps")
