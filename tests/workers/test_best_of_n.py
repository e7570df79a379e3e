"""Best-of-n: the derived checkpoint holds, per prompt, the parent's best image by the chosen
reward; raw and TextNorm best-of-n checkpoints can meet in one pairwise study."""
import pytest
from django.core.management import call_command

from annotate.models import Checkpoint, Image, RewardScore, StudyItem
from annotate.services.scoring import ScoringError, best_of_n_create, reward_model_create, scoring_job_create
from annotate.services.studies import study_create_pairwise
from tests.workers.test_scoring import model_folders, scene  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scored(scene, model_folders):  # noqa: F811
    ds, ckpt = scene
    rm = reward_model_create(name="clip", kind="clip", location=str(model_folders["clip"]), config={"device": "cpu"})
    scoring_job_create(reward_model=rm, checkpoint=ckpt, prompt_set_source="rule_based", scale=3.0)
    return ds, ckpt, rm


def best_by(rm, variant, parent, prompt_id, n, **params):
    candidates = list(Image.objects.filter(checkpoint=parent, prompt_id=prompt_id).order_by("seed", "index")[:n])
    scores = {s.image_id: s.value for s in RewardScore.objects.filter(reward_model=rm, variant=variant,
                                                                      image__in=candidates, **params)}
    return max(candidates, key=lambda i: scores[i.id])


def test_best_of_n_raw_and_textnorm_make_a_pairwise_study(scored):
    ds, parent, rm = scored
    raw = best_of_n_create(parent=parent, reward_model=rm, n=3, variant="raw")
    tn = best_of_n_create(parent=parent, reward_model=rm, n=3, variant="textnorm", prompt_set_source="rule_based",
                          scale=3.0)
    assert raw.backend == tn.backend == "best_of_n" and raw.derived_from == tn.derived_from == parent
    assert tn.config == {"reward_model": rm.id, "reward_model_name": "clip", "variant": "textnorm", "n": 3,
                         "prompt_set_source": "rule_based", "prompt_set_version": "", "normalize": "minmax",
                         "scale": 3.0, "temperature": 1.0}
    for derived, variant, params in ((raw, "raw", {}), (tn, "textnorm", {"scale": 3.0})):
        images = Image.objects.filter(checkpoint=derived)
        assert images.count() == 3
        for image in images:
            best = best_by(rm, variant, parent, image.prompt_id, 3, **params)
            assert (image.file.name, image.sha256, image.size_bytes) == (best.file.name, best.sha256, best.size_bytes)
            assert image.metadata["selected_from"] == best.id and best.seed < 3
    # Idempotent: same parameters, same checkpoint, nothing added.
    assert best_of_n_create(parent=parent, reward_model=rm, n=3, variant="raw") == raw
    assert Image.objects.filter(checkpoint=raw).count() == 3
    agree = sum(Image.objects.filter(checkpoint=raw, prompt=image.prompt, file=image.file.name).exists()
                for image in Image.objects.filter(checkpoint=tn))
    assert agree < 3, "the fixture's raw and TextNorm picks must differ somewhere"
    study = study_create_pairwise(name="raw vs textnorm", dataset=ds, checkpoints=[raw, tn])
    items = StudyItem.objects.filter(study=study)
    # A prompt where both picked the same image is left out: it would ask for nothing.
    assert items.count() == 3 - agree and study.identical_pairs == agree
    for item in items:
        assert {item.image_a.checkpoint_id, item.image_b.checkpoint_id} == {raw.id, tn.id}
        assert item.image_a.prompt_id == item.image_b.prompt_id


def test_best_of_n_refuses_bad_input_and_writes_nothing(scored, model_folders):  # noqa: F811
    ds, parent, rm = scored
    other = reward_model_create(name="pick", kind="pickscore", location=str(model_folders["pickscore"]))
    with pytest.raises(ScoringError, match="reward_model: 12 image"):
        best_of_n_create(parent=parent, reward_model=other, n=4)
    with pytest.raises(ScoringError, match="n: 3 prompt"):
        best_of_n_create(parent=parent, reward_model=rm, n=5)
    with pytest.raises(ScoringError, match="reward_model: 12 image"):  # no scores with these parameters
        best_of_n_create(parent=parent, reward_model=rm, n=4, variant="textnorm", prompt_set_source="rule_based",
                         scale=10.0)
    with pytest.raises(ScoringError, match="variant"):
        best_of_n_create(parent=parent, reward_model=rm, n=4, variant="best")
    assert not Checkpoint.objects.filter(backend="best_of_n").exists()


def test_commands_score_and_select(scene, model_folders, capsys):  # noqa: F811
    ds, parent = scene
    call_command("score_images", "--reward-model", "cli-clip", "--kind", "clip", "--location",
                 str(model_folders["clip"]), "--checkpoint", parent.name, "--variants", "raw", "--device", "cpu")
    assert RewardScore.objects.filter(variant="raw").count() == 12
    call_command("best_of_n", "--parent", parent.name, "--reward-model", "cli-clip", "--n", "2", "--variant", "raw")
    derived = Checkpoint.objects.get(backend="best_of_n")
    assert Image.objects.filter(checkpoint=derived).count() == 3
    assert derived.name in capsys.readouterr().out
