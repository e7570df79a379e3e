"""Contrastive prompts: the SPEC's rules checked against the TIA2 release, hand-made cases,
and a tiny random language model whose malformed output is dropped, never a crash."""
import json
import re

import pytest
import torch

from annotate.models import ContrastivePromptSet, Dataset, Prompt
from annotate.services.contrastive import (
    ContrastiveError, contrastive_sets_language_model, contrastive_sets_rule_based,
)
from annotate.services.scoring import prompt_sets_select
from workers.ml.contrastive import parse_generated_lines, pluralize, rule_based_contrastive, singularize


def test_counting_rule_reproduces_every_tia2_counting_set(tia2_root):
    sets = json.loads((tia2_root / "prompts/prompt_set_counting.json").read_text())
    assert len(sets) == 150
    for prompt, listed in sets.items():
        # TIA2's lists are n-2, n-1, n+1, n+2 (>= 1), in that order
        assert rule_based_contrastive(prompt) == list(dict.fromkeys(listed)), prompt


def test_composition_rules_cover_tia2s_rule_shaped_prompts(tia2_root):
    sets = json.loads((tia2_root / "prompts/prompt_set_composition.json").read_text())
    for prompt, listed in sets.items():
        ours = rule_based_contrastive(prompt)
        # each object alone, and one object's count raised by one or two (TIA2 entries 0-3, 5-6)
        expected = listed[:4] + listed[5:7]
        assert set(expected) <= set(ours), prompt
        assert prompt not in ours and len(ours) == len(set(ours))


def test_composition_rules_by_hand():
    assert rule_based_contrastive("a photo of a red cat to the left of a blue dog") == [
        "a photo of a red cat", "a photo of a blue dog",
        "a photo of two red cats to the left of a blue dog", "a photo of three red cats to the left of a blue dog",
        "a photo of a red cat to the left of two blue dogs", "a photo of a red cat to the left of three blue dogs",
        "a photo of a red dog to the left of a blue cat",  # object swap
        "a photo of a blue cat to the left of a red dog",  # colour swap
        "a photo of a red cat to the right of a blue dog",  # relation swap
    ]
    # "a dog and a cat" says the same as "a cat and a dog": no object swap
    assert "a photo of a dog and a cat" not in rule_based_contrastive("a photo of a cat and a dog")
    assert "two vases above a cup." in rule_based_contrastive("two cups above a vase.")
    assert rule_based_contrastive("A man below a tree") == [
        "A man", "A tree", "Two men below a tree", "Three men below a tree", "A man below two trees",
        "A man below three trees", "A tree below a man", "A man above a tree",
    ]
    assert rule_based_contrastive("a photo of three cats")[:2] == ["a photo of a cat", "a photo of two cats"]
    assert rule_based_contrastive("A sign that says 'Diffusion'.") == []
    assert rule_based_contrastive("an abstract painting") == ["two abstract paintings", "three abstract paintings"]


def test_capitalised_prompts_are_parsed_and_keep_their_capitals():
    ours = rule_based_contrastive("A photo of three cups")
    assert ours == ["A photo of a cup", "A photo of two cups", "A photo of four cups", "A photo of five cups"]
    assert rule_based_contrastive("a photo of two Teddy Bears above a TV.")[1:3] == [
        "a photo of a TV.", "a photo of a Teddy Bear above a TV."]
    assert rule_based_contrastive("NASA photo of two rockets")[0] == "NASA photo of a rocket"


def test_capitalised_tia2_spatial_prompts_get_tia2s_each_object_alone(tia2_root):
    sets = json.loads((tia2_root / "prompts/prompt_set_comprehensive.json").read_text())
    capitalised = [p for p in sets if p[:1].isupper()]
    assert sum(bool(rule_based_contrastive(p)) for p in capitalised) == 31
    spatial = [p for p in capitalised if re.search(r" (on top of|(on|to) the (left|right) of) ", p)]
    assert len(spatial) == 10
    for prompt in spatial:  # TIA2 lists each object alone first: "A cat.", "A dog."
        ours = rule_based_contrastive(prompt)
        assert set(sets[prompt][:2]) <= set(ours) and all(t[:1].isupper() for t in ours), prompt


def test_plurals_round_trip_on_the_tia2_objects():
    objects = ("airplane apple automobile bird book cake carrot cat chair cup deer dog fork frog horse laptop "
               "microwave orange ship suitcase teddy_bear toaster truck umbrella vase bus knife box").split()
    for obj in (o.replace("_", " ") for o in objects):
        assert singularize(pluralize(obj)) == obj
    assert pluralize("deer") == "deer" and pluralize("teddy bear") == "teddy bears" and pluralize("box") == "boxes"


def test_generated_lines_are_cleaned_and_malformed_ones_dropped():
    text = "\n".join([
        "1. a photo of three cats", "- a photo of three cats", "  ", "* \"a photo of a dog\"",
        "a photo of two cats", "x" * 500, "\ufffd\ufffd broken", "123 456", "Captions:", "2) two dogs\x07",
        "(3) a blue cup",
    ])
    assert parse_generated_lines(text, prompt="a photo of two cats") == [
        "a photo of three cats", "a photo of a dog", "a blue cup",
    ]
    assert parse_generated_lines("", prompt="x") == []


@pytest.fixture
def tiny_lm(tmp_path):
    return _tiny_lm(tmp_path / "lm", n_positions=512)


def _tiny_lm(folder, *, n_positions):
    """A random GPT-2 with one token per character, saved to ``folder`` (nothing downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    from workers.ml.diffusion_random import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges = [("c", "a"), ("o", "f")]
    vocab.update({"ca": len(vocab), "of": len(vocab) + 1})
    vocab["<|endoftext|>"] = len(vocab)
    try:
        tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    except TypeError:
        pytest.fail("this transformers has no GPT2Tokenizer(vocab=, merges=)")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=4, n_positions=n_positions,
                                       bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 1))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.django_db
def test_language_model_sets_are_stored_with_version_and_never_crash(tiny_lm, monkeypatch):
    ds = Dataset.objects.create(name="lm")
    for i, text in enumerate(["a photo of two cats", "a red cup"]):
        Prompt.objects.create(dataset=ds, text=text, source_index=i)
    # A random model writes noise: whatever survives the line filter is stored, nothing crashes.
    result = contrastive_sets_language_model(dataset=ds, model_path=tiny_lm, k=4, max_new_tokens=40)
    assert result.version.startswith("lm-") and result.created + len(result.empty) == 2
    # With a model that writes usable lines (patched decode), the lines are parsed and stored.
    from workers.ml import contrastive

    monkeypatch.setattr(contrastive.LanguageModelGenerator, "generate",
                        lambda self, prompt: parse_generated_lines(
                            f"1. {prompt}\n2. {prompt} at night\n\n3. {prompt} at night\n4. \ufffd", prompt=prompt))
    ds2 = Dataset.objects.create(name="lm2")
    Prompt.objects.create(dataset=ds2, text="a blue vase", source_index=0)
    stored = contrastive_sets_language_model(dataset=ds2, model_path=tiny_lm, k=4)
    row = ContrastivePromptSet.objects.get(prompt__dataset=ds2)
    assert (row.source, row.version, row.texts) == ("language_model", stored.version, ["a blue vase at night"])
    again = contrastive_sets_language_model(dataset=ds2, model_path=tiny_lm, k=4)
    assert (again.created, again.existing) == (0, 1)
    with pytest.raises(ContrastiveError, match="model_path"):
        contrastive_sets_language_model(dataset=ds2, model_path=tiny_lm / "nope")


@pytest.mark.django_db
def test_language_model_with_a_short_context_never_runs_past_it(tmp_path, monkeypatch):
    # The template alone is ~190 tokens here: + 96 new tokens once ran past 256 positions (IndexError).
    from workers.ml.contrastive import LanguageModelGenerator, LanguageModelSettings

    folder = _tiny_lm(tmp_path / "lm256", n_positions=256)
    generator = LanguageModelGenerator(str(folder), LanguageModelSettings())
    assert isinstance(generator.generate("a photo of two cats"), list)
    assert isinstance(generator.generate("a photo of " + "two cats and " * 30 + "a dog"), list)  # input > context
    ds = Dataset.objects.create(name="lm256")
    for i, text in enumerate(["a photo of two cats", "a red cup " * 40]):
        Prompt.objects.create(dataset=ds, text=text, source_index=i)
    result = contrastive_sets_language_model(dataset=ds, model_path=folder)  # default max_new_tokens
    assert result.created + len(result.empty) == 2
    # A prompt the model fails on gives no lines (recorded as empty), not a crash of the run.
    from workers.ml import contrastive

    def broken(self, prompt):
        raise RuntimeError("boom")

    monkeypatch.setattr(contrastive.LanguageModelGenerator, "_generate", broken)
    assert generator.generate("a photo of two cats") == []
    ds2 = Dataset.objects.create(name="lm256-broken")
    Prompt.objects.create(dataset=ds2, text="a blue vase", source_index=0)
    assert len(contrastive_sets_language_model(dataset=ds2, model_path=folder).empty) == 1


def test_context_length_is_read_from_any_config_family():
    from transformers import GPT2Config, LlamaConfig

    from workers.ml.contrastive import context_length

    assert context_length(GPT2Config(n_positions=256)) == 256
    assert context_length(LlamaConfig(max_position_embeddings=300)) == 300
    assert context_length(object()) is None


@pytest.mark.django_db
def test_rule_based_sets_are_stored_once_and_imported_sets_are_reused(small_tia2):
    from annotate.services.tia2_import import tia2_import

    tia2_import(root=small_tia2)
    counting = Dataset.objects.get(name="tia2-counting")
    first = contrastive_sets_rule_based(dataset=counting)
    assert (first.created, first.source, first.version) == (2, "rule_based", "rules-v1")
    assert contrastive_sets_rule_based(dataset=counting).created == 0
    ids = list(counting.prompts.values_list("id", flat=True))
    imported = prompt_sets_select(prompt_ids=ids, source="imported")
    rules = prompt_sets_select(prompt_ids=ids, source="rule_based", version="rules-v1")
    for pid in ids:  # on TIA2 counting prompts the rules give exactly the imported sets
        assert imported[pid].texts == rules[pid].texts
        assert rules[pid].prompt_set[0] == rules[pid].prompt.text
