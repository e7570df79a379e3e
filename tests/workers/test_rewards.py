"""Reward models: tiny random models of each architecture, saved and loaded through
from_pretrained; the project's batched scores against the naive per-image computation
(the transformers processor on PIL images and one model call per image with its prompt set)."""
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from tests.workers.tiny_rewards import save_blip, save_blip2, save_clip
from workers.ml import rewards
from workers.ml.preprocess import PreprocessSpec, preprocess
from workers.ml.rewards import MissingDependency, RewardModelError, RewardSpec, load_reward_model
from workers.ml.textnorm import textnorm

PROMPT_SETS = [
    ["a photo of two cats", "a photo of a cat", "a photo of three cats", "a photo of four cats"],
    ["a red cup and a blue vase", "a blue cup and a red vase", "a red cup", "a blue vase", "two red cups"],
    ["a dog"],
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    return {
        "clip": save_clip(root / "clip", seed=1),
        "pickscore": save_clip(root / "pickscore", seed=2, logit_scale=4.6),
        "blip_itm": save_blip(root / "blip", seed=3),
        "blip2_itm": save_blip2(root / "blip2", seed=4),
    }


def images(n=6, shape=(56, 44)):
    rng = np.random.default_rng(7)
    # smooth images, so that resampling differences between PIL and torch stay small
    base = rng.integers(0, 256, (n, 7, 5, 3)).astype(np.uint8)
    return [Image.fromarray(b).resize(shape, Image.BILINEAR) for b in base]


def naive_scores(kind, folder, pils, prompt_sets):
    """One processor call on a PIL image and one model call per image with its prompt set."""
    from transformers import AutoTokenizer, CLIPModel, CLIPProcessor

    out = []
    if kind in ("clip", "pickscore"):
        model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        proc = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        for pil, texts in zip(pils, prompt_sets, strict=True):
            inputs = proc(text=texts, images=pil, return_tensors="pt", padding=True)
            with torch.no_grad():
                logits = model(**inputs).logits_per_image[0]
            factor = model.logit_scale.exp() if kind == "clip" else 100.0
            out.append((logits / factor).detach().double().numpy())
        return out
    if kind == "blip_itm":
        from transformers import BlipForImageTextRetrieval, BlipProcessor

        model = BlipForImageTextRetrieval.from_pretrained(folder, local_files_only=True).eval()
        proc = BlipProcessor.from_pretrained(folder, local_files_only=True)
        for pil, texts in zip(pils, prompt_sets, strict=True):
            inputs = proc(images=[pil] * len(texts), text=texts, return_tensors="pt", padding=True)
            with torch.no_grad():
                itm = model(**inputs, use_itm_head=True).itm_score
            out.append(itm.softmax(-1)[:, 1].double().numpy())
        return out
    from transformers import Blip2ForImageTextRetrieval, BlipImageProcessor

    model = Blip2ForImageTextRetrieval.from_pretrained(folder, local_files_only=True).eval()
    image_proc = BlipImageProcessor.from_pretrained(folder, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    for pil, texts in zip(pils, prompt_sets, strict=True):
        enc = tok(texts, return_tensors="pt", padding=True)
        pixels = image_proc(images=[pil] * len(texts), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels,
                           use_image_text_matching_head=True).logits_per_image
        out.append(logits.softmax(-1)[:, 1].double().numpy())
    return out


@pytest.mark.parametrize("kind", ["clip", "pickscore", "blip_itm", "blip2_itm"])
@pytest.mark.parametrize("shape, atol", [((32, 32), 1e-4), ((56, 44), 1e-2)], ids=["model-size", "resized"])
def test_batched_scores_equal_the_naive_per_image_computation(models, kind, shape, atol):
    """At the model's input size the two paths see the same pixels and agree to float
    precision; resized, torch's antialiased bicubic and PIL's differ slightly."""
    pils = images(shape=shape)
    sets = [PROMPT_SETS[i % len(PROMPT_SETS)] for i in range(len(pils))]
    scorer = load_reward_model(RewardSpec(kind=kind, location=str(models[kind]), config={"device": "cpu"}))
    ours = scorer.prompt_logits(pils, sets)
    naive = naive_scores(kind, models[kind], pils, sets)
    assert [len(o) for o in ours] == [len(s) for s in sets]
    for o, n in zip(ours, naive, strict=True):
        np.testing.assert_allclose(o, n, atol=atol)
    # The scores discriminate (a test that random weights could pass by being constant would prove nothing).
    assert np.ptp(np.concatenate(ours)) > 0.01
    # TextNorm from the batched logits equals TextNorm from the naive ones.
    for o, n in zip(ours, naive, strict=True):
        np.testing.assert_allclose(textnorm(o, scale=3.0), textnorm(n, scale=3.0), atol=5 * atol)


def test_pickscore_is_exp_logit_scale_times_cosine_over_100(models):
    clip_like = load_reward_model(RewardSpec(kind="clip", location=str(models["pickscore"]),
                                             config={"device": "cpu"}))
    pick = load_reward_model(RewardSpec(kind="pickscore", location=str(models["pickscore"]),
                                        config={"device": "cpu"}))
    pils = images(2)
    cos = clip_like.prompt_logits(pils, PROMPT_SETS[:2])
    ps = pick.prompt_logits(pils, PROMPT_SETS[:2])
    for c, p in zip(cos, ps, strict=True):
        np.testing.assert_allclose(p, np.exp(4.6) * c / 100, rtol=1e-5)
        assert np.all(np.abs(c) <= 1.0 + 1e-6)


def test_text_embeddings_are_encoded_once_and_images_once(models):
    scorer = load_reward_model(RewardSpec(kind="clip", location=str(models["clip"]), config={"device": "cpu"}))
    scorer._text_embeddings.clear()
    calls = {"text": 0, "image": 0}

    def count(name):
        def hook(module, args, kwargs):
            calls[name] += kwargs.get("input_ids", kwargs.get("pixel_values")).shape[0]
        return hook

    hooks = [scorer.model.text_model.register_forward_pre_hook(count("text"), with_kwargs=True),
             scorer.model.vision_model.register_forward_pre_hook(count("image"), with_kwargs=True)]
    request_cleanup = [h.remove for h in hooks]
    pils = images(6)
    sets = [PROMPT_SETS[0]] * 3 + [PROMPT_SETS[1]] * 3
    first = scorer.prompt_logits(pils, sets)
    assert calls == {"text": 9, "image": 6}
    again = scorer.prompt_logits(pils, sets)  # texts come from the cache
    assert calls == {"text": 9, "image": 12}
    for remove in request_cleanup:
        remove()
    for a, b in zip(first, again, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_itm_output_logit_is_the_log_odds_of_the_probability(models):
    pils = images(2)
    prob = load_reward_model(RewardSpec(kind="blip_itm", location=str(models["blip_itm"]),
                                        config={"device": "cpu"})).prompt_logits(pils, PROMPT_SETS[:2])
    logit = load_reward_model(RewardSpec(kind="blip_itm", location=str(models["blip_itm"]),
                                         config={"device": "cpu", "output": "logit"})).prompt_logits(pils, PROMPT_SETS[:2])
    for p, lg in zip(prob, logit, strict=True):
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-lg)), rtol=1e-5)


def test_blip2_itc_head_is_the_max_query_cosine(models):
    from transformers import Blip2ForImageTextRetrieval, BlipImageProcessor, AutoTokenizer

    folder = models["blip2_itm"]
    scorer = load_reward_model(RewardSpec(kind="blip2_itm", location=str(folder),
                                          config={"device": "cpu", "head": "itc"}))
    pils = images(1)
    ours = scorer.prompt_logits(pils, PROMPT_SETS[:1])[0]
    model = Blip2ForImageTextRetrieval.from_pretrained(folder, local_files_only=True).eval()
    texts = PROMPT_SETS[0]
    enc = AutoTokenizer.from_pretrained(folder)(texts, return_tensors="pt", padding=True)
    pixels = BlipImageProcessor.from_pretrained(folder)(images=[pils[0]] * len(texts), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        naive = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels,
                      use_image_text_matching_head=False).logits_per_image
    np.testing.assert_allclose(ours, naive.diagonal().double().numpy(), atol=2e-3)


def test_tensor_preprocessing_matches_the_clip_processor():
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24})
    pils = images(3, shape=(64, 40))
    theirs = proc(images=pils, return_tensors="pt")["pixel_values"]
    spec = PreprocessSpec.from_config(proc.to_dict(), default_size=24)
    ours = preprocess([np.asarray(p) for p in pils], spec, device="cpu", dtype=torch.float32)
    assert ours.shape == theirs.shape == (3, 3, 24, 24)
    assert (ours - theirs).abs().mean() < 0.02


def test_missing_location_and_unknown_kind_give_clear_errors(tmp_path):
    with pytest.raises(RewardModelError, match="not a local folder.*allow_download"):
        load_reward_model(RewardSpec(kind="clip", location="openai/clip-vit-large-patch14"))
    with pytest.raises(RewardModelError, match="unknown reward model kind 'nope'"):
        load_reward_model(RewardSpec(kind="nope", location=str(tmp_path)))
    with pytest.raises(RewardModelError, match="cannot load"):
        load_reward_model(RewardSpec(kind="clip", location=str(tmp_path)))


def test_optional_plugins_name_their_kind_and_package(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("ImageReward", "hpsv2") else real(name, *a))
    with pytest.raises(MissingDependency, match="'imagereward' needs the optional package 'image-reward'"):
        load_reward_model(RewardSpec(kind="imagereward", location=str(tmp_path)))
    with pytest.raises(MissingDependency, match="'hpsv2' needs the optional package 'hpsv2'"):
        load_reward_model(RewardSpec(kind="hpsv2", location=str(tmp_path)))


def test_a_plugin_registers_by_kind_and_is_cached_by_fingerprint(monkeypatch):
    monkeypatch.setattr(rewards, "_REGISTRY", dict(rewards._REGISTRY))
    built = []

    @rewards.register("length")
    def _length(spec):
        built.append(spec)
        return rewards.PackagePairScorer("length", lambda text, pils: [len(text)] * len(pils))

    spec = RewardSpec(kind="length", location="-", fingerprint="abc", config={"device": "cpu"})
    scorer = load_reward_model(spec)
    assert load_reward_model(RewardSpec(kind="length", location="-", fingerprint="abc",
                                        config={"device": "cpu"})) is scorer
    assert len(built) == 1
    out = scorer.prompt_logits(images(2), [["ab", "abcd"], ["abc"]])
    assert [list(o) for o in out] == [[2.0, 4.0], [3.0]]


def test_a_ready_uint8_batch_preprocesses_like_the_images_it_holds():
    import torch

    from workers.ml.preprocess import PreprocessSpec, preprocess

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(3)]
    spec = PreprocessSpec.from_config({"size": {"shortest_edge": 32}, "do_center_crop": True,
                                       "crop_size": {"height": 32, "width": 32}}, default_size=32)
    batch = torch.from_numpy(np.stack(arrays))  # as the scoring job's decoders fill it
    expected = preprocess(arrays, spec, device="cpu", dtype=torch.float32)
    assert torch.equal(preprocess(batch, spec, device="cpu", dtype=torch.float32), expected)


def _fake_module(monkeypatch, name, **attrs):
    """A stand-in for an optional package, importable and found by ``importlib.util.find_spec``."""
    import importlib.machinery
    import sys
    import types

    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def flat_images(values):
    """One flat-colour image per value, so that a fake scorer can tell which image it got."""
    return [np.full((8, 8, 3), v, dtype=np.uint8) for v in values]


def _fake_score(image, text):
    return len(text) * 1000 + int(np.asarray(image)[0, 0, 0])


PLUGIN_SETS = [["a cat", "two cats", "a dog"], ["a dog"], ["two cats", "a cat"]]


def _expected(values, prompt_sets):
    return [[len(t) * 1000 + v for t in texts] for v, texts in zip(values, prompt_sets, strict=True)]


@pytest.fixture
def fake_hpsv2(monkeypatch):
    calls = []

    def score(img_path, prompt, cp=None, hps_version="v2.0"):
        calls.append({"cp": cp, "hps_version": hps_version, "prompt": prompt, "n": len(img_path)})
        if cp is None:
            calls[-1]["downloaded"] = True
        return [float(_fake_score(im, prompt)) for im in img_path]

    _fake_module(monkeypatch, "hpsv2", score=score)
    monkeypatch.setattr(rewards, "_cache", OrderedDict())
    return calls


@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_hpsv2_scores_with_the_local_checkpoint(fake_hpsv2, tmp_path, as_folder):
    checkpoint = tmp_path / "HPS_v2.1_compressed.pt"
    checkpoint.write_bytes(b"weights")
    location = tmp_path if as_folder else checkpoint
    scorer = load_reward_model(RewardSpec(kind="hpsv2", location=str(location), config={"device": "cpu"}))
    values = [10, 20, 30]
    out = scorer.prompt_logits(flat_images(values), PLUGIN_SETS)
    assert [list(o) for o in out] == _expected(values, PLUGIN_SETS)
    assert {c["cp"] for c in fake_hpsv2} == {str(checkpoint)}
    assert {c["hps_version"] for c in fake_hpsv2} == {"v2.1"}
    assert len(fake_hpsv2) == 3  # one call per distinct text of the batch
    pending = scorer.prompt_logits_start(flat_images(values), PLUGIN_SETS)
    assert [list(o) for o in pending.result()] == _expected(values, PLUGIN_SETS)


def test_hpsv2_without_a_local_checkpoint_downloads_only_when_allowed(fake_hpsv2, tmp_path):
    with pytest.raises(RewardModelError, match="'xswu/HPSv2' is not a local checkpoint.*allow_download"):
        load_reward_model(RewardSpec(kind="hpsv2", location="xswu/HPSv2", config={"device": "cpu"}))
    with pytest.raises(RewardModelError, match="not a local checkpoint"):  # a folder without the file
        load_reward_model(RewardSpec(kind="hpsv2", location=str(tmp_path), config={"device": "cpu"}))
    assert fake_hpsv2 == []
    scorer = load_reward_model(RewardSpec(kind="hpsv2", location="xswu/HPSv2",
                                          config={"device": "cpu", "allow_download": True}))
    scorer.prompt_logits(flat_images([5]), [["a cat"]])
    assert fake_hpsv2[0]["cp"] is None and fake_hpsv2[0]["downloaded"]


@pytest.fixture
def fake_imagereward(monkeypatch):
    loads = []

    class Model:
        def score(self, prompt, images):
            scores = [float(_fake_score(im, prompt)) for im in images]
            return scores[0] if len(scores) == 1 else scores  # as ImageReward: a float for one image

    def load(name="ImageReward-v1.0", device="cpu", download_root=None, med_config=None):
        loads.append({"name": name, "device": device, "med_config": med_config})
        return Model()

    _fake_module(monkeypatch, "ImageReward", load=load)
    monkeypatch.setattr(rewards, "_cache", OrderedDict())
    return loads


def test_imagereward_loads_the_local_checkpoint_and_med_config(fake_imagereward, tmp_path):
    checkpoint = tmp_path / "ImageReward.pt"
    checkpoint.write_bytes(b"weights")
    (tmp_path / "med_config.json").write_text("{}")
    scorer = load_reward_model(RewardSpec(kind="imagereward", location=str(checkpoint),
                                          config={"device": "cpu"}))
    assert fake_imagereward == [{"name": str(checkpoint), "device": "cpu",
                                 "med_config": str(tmp_path / "med_config.json")}]
    values = [40, 50, 60]
    out = scorer.prompt_logits(flat_images(values), PLUGIN_SETS)
    assert [list(o) for o in out] == _expected(values, PLUGIN_SETS)
    # config.med_config names one elsewhere
    other = tmp_path / "elsewhere" / "blip.json"
    other.parent.mkdir()
    other.write_text("{}")
    load_reward_model(RewardSpec(kind="imagereward", location=str(tmp_path),
                                 config={"device": "cpu", "med_config": str(other)}))
    assert fake_imagereward[-1] == {"name": str(checkpoint), "device": "cpu", "med_config": str(other)}


def test_imagereward_without_local_files_downloads_only_when_allowed(fake_imagereward, tmp_path):
    not_local = "'ImageReward-v1.0' is not a local checkpoint.*allow_download"
    with pytest.raises(RewardModelError, match=not_local):
        load_reward_model(RewardSpec(kind="imagereward", location="ImageReward-v1.0",
                                     config={"device": "cpu"}))
    checkpoint = tmp_path / "ImageReward.pt"
    checkpoint.write_bytes(b"weights")  # but no med_config.json beside it
    missing = re.escape(str(checkpoint)) + ".*no med_config.json.*allow_download"
    with pytest.raises(RewardModelError, match=missing):
        load_reward_model(RewardSpec(kind="imagereward", location=str(checkpoint), config={"device": "cpu"}))
    assert fake_imagereward == []
    load_reward_model(RewardSpec(kind="imagereward", location="ImageReward-v1.0",
                                 config={"device": "cpu", "allow_download": True}))
    assert fake_imagereward == [{"name": "ImageReward-v1.0", "device": "cpu", "med_config": None}]


@pytest.fixture
def throwaway_kind(monkeypatch):
    """A registered kind whose scorers are cheap objects, and an empty cache of its own."""
    monkeypatch.setattr(rewards, "_REGISTRY", dict(rewards._REGISTRY))
    monkeypatch.setattr(rewards, "_cache", OrderedDict())
    built = []

    @rewards.register("throwaway")
    def _throwaway(spec):
        built.append(spec.fingerprint)
        return rewards.PackagePairScorer("throwaway", lambda text, pils: [0.0] * len(pils))

    def spec(name):
        return RewardSpec(kind="throwaway", location="-", fingerprint=name, config={"device": "cpu"})

    return spec, built


def test_the_cache_keeps_the_most_recently_used_scorers(throwaway_kind, monkeypatch):
    spec, built = throwaway_kind
    monkeypatch.setenv("CALIBRA_REWARD_CACHE_SIZE", "2")
    a = load_reward_model(spec("a"))
    load_reward_model(spec("b"))
    load_reward_model(spec("c"))
    assert list(rewards._cache) == [("b", "cpu"), ("c", "cpu")]  # "a" evicted
    assert load_reward_model(spec("b")) is rewards._cache[("b", "cpu")]  # reused: now most recent
    load_reward_model(spec("d"))
    assert list(rewards._cache) == [("b", "cpu"), ("d", "cpu")]  # "c" was the least recently used
    assert load_reward_model(spec("a")) is not a  # rebuilt
    assert built == ["a", "b", "c", "d", "a"]
    # A size of 1, read at load time.
    monkeypatch.setenv("CALIBRA_REWARD_CACHE_SIZE", "1")
    load_reward_model(spec("e"))
    assert list(rewards._cache) == [("e", "cpu")]


def test_the_cache_defaults_to_two_and_gives_cuda_memory_back(throwaway_kind, monkeypatch):
    spec, _ = throwaway_kind
    monkeypatch.delenv("CALIBRA_REWARD_CACHE_SIZE", raising=False)
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    load_reward_model(spec("a"))
    load_reward_model(spec("b"))
    assert emptied == []
    load_reward_model(spec("c"))
    assert list(rewards._cache) == [("b", "cpu"), ("c", "cpu")]
    assert len(emptied) == 1
    rewards.clear_cache()
    assert len(rewards._cache) == 0 and len(emptied) == 2
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # nothing to give back
    for name in "abc":
        load_reward_model(spec(name))
    assert len(emptied) == 2


def test_scorers_put_in_the_cache_directly_are_used_and_can_be_popped(throwaway_kind, monkeypatch):
    spec, built = throwaway_kind
    monkeypatch.setenv("CALIBRA_REWARD_CACHE_SIZE", "2")
    mine = rewards.PackagePairScorer("throwaway", lambda text, pils: [1.0] * len(pils))
    rewards._cache[("mine", "cpu")] = mine  # as the benchmarks hand a model to the worker
    assert load_reward_model(spec("mine")) is mine and built == []
    load_reward_model(spec("x"))
    assert rewards._cache.pop(("mine", "cpu")) is mine
    assert list(rewards._cache) == [("x", "cpu")]


def test_a_bad_cache_size_is_a_clear_error(throwaway_kind, monkeypatch):
    spec, _ = throwaway_kind
    for bad in ("0", "two"):
        monkeypatch.setenv("CALIBRA_REWARD_CACHE_SIZE", bad)
        with pytest.raises(RewardModelError, match="CALIBRA_REWARD_CACHE_SIZE must be .* at least 1"):
            load_reward_model(spec("a"))
