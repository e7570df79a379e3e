import json

import numpy as np
import pytest

from workers.ml import procedural
from workers.ml.backends import GenerationParams, UnsupportedBackend, BackendSpec, get_backend
from workers.ml.scenes import OBJECTS, Scene, SceneObject, count_phrase, parse_scene
from workers.ml.seeding import image_seed


@pytest.mark.parametrize("category", ["counting", "composition"])
def test_every_tia2_scene_prompt_parses(tia2_root, category):
    labels = json.loads((tia2_root / f"human_annotations/human_labels_{category}.json").read_text())
    captions = {v["caption"] for v in labels.values()}
    scenes = {c: parse_scene(c) for c in captions}
    assert all(scenes.values()), [c for c, s in scenes.items() if s is None][:3]
    if category == "counting":
        assert {s.objects[0].count for s in scenes.values()} == {1, 2, 3, 4, 5, 6}
        assert {s.objects[0].name for s in scenes.values()} == set(OBJECTS)
    else:
        assert all(len(s.objects) == 2 and {o.count for o in s.objects} == {1} for s in scenes.values())
    for caption, scene in scenes.items():
        assert scene.describe() == caption


def test_phrases_and_non_scene_prompts():
    assert count_phrase("apple", 1) == "an apple"
    assert count_phrase("teddy bear", 3) == "three teddy bears"
    assert parse_scene("A magnifying glass over a page of a 1950s batman comic.") is None


def test_same_seed_same_pixels_and_different_seed_different_pixels():
    a = procedural.render("a realistic photo of three cups", seed=11, error_rate=0.5)
    b = procedural.render("a realistic photo of three cups", seed=11, error_rate=0.5)
    c = procedural.render("a realistic photo of three cups", seed=12, error_rate=0.5)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_error_rate_sets_how_often_the_drawing_is_wrong():
    prompt = "a realistic photo of a dog and a vase"
    right = [procedural.render(prompt, seed=s, error_rate=0.0) for s in range(30)]
    wrong = [procedural.render(prompt, seed=s, error_rate=1.0) for s in range(30)]
    assert all(r.matches_prompt for r in right)
    assert not any(r.matches_prompt for r in wrong)
    assert all(r.asked == Scene((SceneObject("dog", 1), SceneObject("vase", 1))) for r in wrong)
    some = [procedural.render(prompt, seed=s, error_rate=0.3).matches_prompt for s in range(400)]
    assert 0.6 < np.mean(some) < 0.8


def test_error_rate_holds_across_prompts_at_one_seed_and_checkpoints_err_independently():
    """A demo makes a few seeds of many prompts: the share drawn wrong must be error_rate there
    too, and two checkpoints' mistakes must not fall on the same images (nor one's inside the
    other's)."""
    prompts = [f"a realistic photo of {count_phrase(name, n)}" for n in range(2, 7) for name in OBJECTS]
    assert len(prompts) == 125 and all(parse_scene(p) for p in prompts)
    careful = [procedural.render(p, seed=0, size=(32, 32), error_rate=0.1, salt="careful").matches_prompt
               for p in prompts]
    sloppy = [procedural.render(p, seed=0, size=(32, 32), error_rate=0.45, salt="sloppy").matches_prompt
              for p in prompts]
    assert 0.02 <= 1 - np.mean(careful) <= 0.2 and 0.33 <= 1 - np.mean(sloppy) <= 0.57
    careful_wrong = {i for i, ok in enumerate(careful) if not ok}
    sloppy_wrong = {i for i, ok in enumerate(sloppy) if not ok}
    assert careful_wrong and not careful_wrong <= sloppy_wrong
    again = procedural.render(prompts[0], seed=0, size=(32, 32), error_rate=0.45, salt="sloppy")
    assert again.matches_prompt == sloppy[0]


def test_image_seed_is_deterministic_and_distinct():
    assert image_seed(0, 0) == image_seed(0, 0)
    seeds = {image_seed(s, i) for s in range(5) for i in range(10)}
    assert len(seeds) == 50 and all(0 <= s < 2**63 for s in seeds)


def test_backend_cache_and_unknown_backend():
    spec = BackendSpec(backend="procedural", config={"error_rate": 0.2}, fingerprint="f")
    backend = get_backend(spec)
    assert get_backend(BackendSpec(backend="procedural", config={"error_rate": 0.2}, fingerprint="f")) is backend
    images = backend.generate(["a realistic photo of a cup"] * 2, [1, 2], GenerationParams(width=64, height=48))
    assert [g.image.size for g in images] == [(64, 48), (64, 48)]
    assert all(g.metadata["matches_prompt"] in (True, False) for g in images)
    with pytest.raises(UnsupportedBackend):
        get_backend(BackendSpec(backend="nope"))
    with pytest.raises(ValueError, match="error_rate"):
        get_backend(BackendSpec(backend="procedural", config={"error_rate": 2}))


def test_wrong_counts_stay_drawable_and_nameable_up_to_ten():
    # A count of 10 perturbed to 11 once crashed the job with only "KeyError: 11".
    for seed in range(21):
        r = procedural.render("a realistic photo of ten cups", seed=seed, error_rate=1.0)
        assert r.matches_prompt is False and r.drawn.objects[0].count == 9, seed
    for n in range(1, 11):
        prompt = Scene((SceneObject("cup", n),)).describe()
        for seed in range(5):
            r = procedural.render(prompt, seed=seed, size=(64, 64), error_rate=1.0)
            assert r.matches_prompt is False and 1 <= r.drawn.objects[0].count <= 10, (n, seed)
            assert parse_scene(r.drawn.describe()) == r.drawn
    backend = get_backend(BackendSpec(backend="procedural", config={"error_rate": 1.0}, fingerprint="ten"))
    images = backend.generate(["a realistic photo of ten cups"] * 3, [0, 1, 2], GenerationParams(width=64, height=64))
    assert [g.metadata["drawn"] for g in images] == ["a realistic photo of nine cups"] * 3


def test_a_render_failure_names_the_prompt(monkeypatch):
    monkeypatch.setattr(procedural, "_perturb", lambda scene, rng: Scene((SceneObject("cup", 0),)))
    with pytest.raises(RuntimeError, match="a realistic photo of two cups"):
        procedural.render("a realistic photo of two cups", seed=0, error_rate=1.0)
    assert count_phrase("cup", 11) == "11 cups"
