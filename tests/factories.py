"""Small builders for studies, shared by the tests."""
import hashlib

from annotate.models import Checkpoint, Dataset, Image, Prompt
from annotate.roles import ANNOTATORS
from annotate.services.accounts import user_create_with_role
from annotate.services.studies import study_add_members, study_create_pairwise, study_create_rating, study_open


def make_images(*, prompts: int = 4, per_prompt: int = 2, checkpoints=("alpha-ckpt", "beta-ckpt"),
                truth=None) -> tuple[Dataset, list[Checkpoint]]:
    """A dataset whose checkpoints have ``per_prompt`` images of every prompt (seed 0, index i).
    ``truth(checkpoint_name, prompt_index, image_index)`` sets the procedural ground truth."""
    dataset = Dataset.objects.create(name=f"ds-{Dataset.objects.count()}")
    made = [Checkpoint.objects.get_or_create(name=n, defaults={"backend": "procedural"})[0] for n in checkpoints]
    for p in range(prompts):
        prompt = Prompt.objects.create(dataset=dataset, text=f"a realistic photo of {p + 1} cups", source_index=p)
        for ckpt in made:
            for i in range(per_prompt):
                meta = {} if truth is None else {"matches_prompt": truth(ckpt.name, p, i)}
                file = f"generated/{ckpt.id}/{prompt.id}_0_{i}.jpg"  # each its own bytes
                Image.objects.create(prompt=prompt, checkpoint=ckpt, seed=0, index=i, metadata=meta, file=file,
                                     sha256=hashlib.sha256(file.encode()).hexdigest(), size_bytes=1)
    return dataset, made


def annotators(n: int, prefix: str = "ann") -> list:
    return [user_create_with_role(username=f"{prefix}{i}", password="pw-123456-x", role=ANNOTATORS)
            for i in range(n)]


def _open(create, name: str, members, kwargs: dict):
    image_args = {k: kwargs.pop(k) for k in ("prompts", "per_prompt", "truth", "checkpoints") if k in kwargs}
    dataset, checkpoints = make_images(**image_args)
    study = create(name=name, dataset=dataset, checkpoints=checkpoints, **kwargs)
    if members:
        study_add_members(study=study, usernames=[u.username for u in members])
    return study_open(study=study)


def open_pairwise(*, members=(), **kwargs):
    return _open(study_create_pairwise, "pairs", members, kwargs)


def open_rating(*, members=(), **kwargs):
    return _open(study_create_rating, "ratings", members, kwargs)
