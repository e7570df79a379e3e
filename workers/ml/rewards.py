"""Reward models behind one interface, a plug-in registry by kind, and a per-process cache.

Every scorer answers ``prompt_logits(images, prompt_sets)``: for each image, the reward
model's score l_i of every prompt of its prompt set (original first), so the raw reward is
column 0 and TextNorm is a function of the whole row (``workers.ml.textnorm``).
``prompt_logits_start`` is the same in two halves: it queues the batch's work on the device
and returns at once; ``.result()`` waits for the scores. A scoring job keeps one batch in
flight that way, so the host builds and writes one batch's rows while the device scores the
next (on the CPU the work is done by the time ``start`` returns).

- Dual encoders (CLIP, PickScore): each image is encoded once, each text once per process
  (a cache of text embeddings), then one matrix product gives every score of the batch.
- Cross-attention ITM models (BLIP, BLIP-2): each image is encoded once; the (image, text)
  pairs run through the matching head in batches.

Nothing is loaded at import time; ``load_reward_model`` builds a scorer on first use and
keeps it for the next call with the same fingerprint, the ``CALIBRA_REWARD_CACHE_SIZE`` most
recently used ones (default 2) per process. Weights come from a local folder (or, for the
package plug-ins, a local checkpoint file); a hub id only when ``config["allow_download"]``
is true. CPU/float32 by default, float16 on CUDA (``config["device"]`` and ``config["dtype"]``
override).
"""
from __future__ import annotations

import gc
import hashlib
import importlib.util
import inspect
import json
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.ml.preprocess import PreprocessSpec, preprocess, to_uint8_batch


class RewardModelError(ValueError):
    """A reward model that cannot be loaded or used as configured."""


class MissingDependency(RewardModelError):
    pass


@dataclass(frozen=True)
class RewardSpec:
    kind: str
    location: str
    config: dict = field(default_factory=dict, hash=False, compare=False)
    fingerprint: str = ""

    @property
    def cache_key(self) -> str:
        if self.fingerprint:
            return self.fingerprint
        blob = json.dumps([self.kind, self.location, self.config], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


Factory = Callable[[RewardSpec], "RewardScorer"]
_REGISTRY: dict[str, tuple[Factory, tuple[tuple[str, str], ...]]] = {}
# (fingerprint, device) -> scorer, least recently used first. Benchmarks put scorers in and
# pop them out directly, so it stays a plain mapping; ``load_reward_model`` keeps the order.
_cache: OrderedDict[tuple[str, str], RewardScorer] = OrderedDict()
CACHE_SIZE_ENV = "CALIBRA_REWARD_CACHE_SIZE"
DEFAULT_CACHE_SIZE = 2


def register(kind: str, *, requires: Sequence[tuple[str, str]] = ()) -> Callable[[Factory], Factory]:
    """Register a scorer factory for ``kind``. ``requires``: (import name, package name)
    pairs of optional dependencies, checked when a model of this kind is loaded."""
    def decorator(factory: Factory) -> Factory:
        _REGISTRY[kind] = (factory, tuple(requires))
        return factory
    return decorator


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


def load_reward_model(spec: RewardSpec) -> RewardScorer:
    """The scorer for ``spec``, built once per process and device (keyed by fingerprint)."""
    if spec.kind not in _REGISTRY:
        raise RewardModelError(f"unknown reward model kind {spec.kind!r} (known: {', '.join(registered_kinds())})")
    factory, requires = _REGISTRY[spec.kind]
    for module, package in requires:
        if importlib.util.find_spec(module) is None:
            raise MissingDependency(
                f"reward model kind {spec.kind!r} needs the optional package {package!r} "
                f"(import name {module!r}), which is not installed in this worker"
            )
    key = (spec.cache_key, _device_of(spec.config))
    limit = _cache_size()
    scorer = _cache.get(key)
    if scorer is None:
        # Room first: the evicted model's device memory is released before the new one loads.
        _evict_to(limit - 1)
        scorer = factory(spec)
        _cache[key] = scorer
    elif hasattr(_cache, "move_to_end"):
        _cache.move_to_end(key)
    _evict_to(limit)  # scorers put in directly may have overfilled it
    return scorer


def clear_cache() -> None:
    """Drop every cached scorer and hand their device memory back."""
    _cache.clear()
    _release_device_memory()


def _cache_size() -> int:
    """How many scorers a process keeps (``CALIBRA_REWARD_CACHE_SIZE``, read at each load):
    reward models are large, and a worker that scores with many of them in turn would
    otherwise hold all of them on the device at once."""
    raw = os.environ.get(CACHE_SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_CACHE_SIZE
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise RewardModelError(f"{CACHE_SIZE_ENV} must be a whole number of at least 1, not {raw!r}")
    return size


def _evict_to(size: int) -> None:
    """Drop the least recently used scorers until at most ``size`` remain."""
    evicted = False
    while len(_cache) > max(size, 0):
        del _cache[next(iter(_cache))]
        evicted = True
    if evicted:
        _release_device_memory()


def _release_device_memory() -> None:
    """Return the dropped models' cached CUDA blocks to the device, so that the next model
    (or another process) can use them. Nothing to do where CUDA was never initialised; a
    scorer still referenced elsewhere (a running job) is freed when that reference goes."""
    torch = sys.modules.get("torch")  # not imported: no CUDA memory to give back
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    gc.collect()  # models caught in reference cycles would otherwise keep their blocks
    torch.cuda.empty_cache()


def _device_of(config: dict) -> str:
    if config.get("device"):
        return str(config["device"])
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype_of(config: dict, device: str):
    import torch

    name = config.get("dtype") or ("float16" if device.startswith("cuda") else "float32")
    if name not in ("float32", "float16", "bfloat16"):
        raise RewardModelError(f"config.dtype must be float32, float16 or bfloat16, not {name!r}")
    return getattr(torch, name)


def _pretrained_source(spec: RewardSpec) -> tuple[str, dict]:
    """Where from_pretrained reads: a local folder, or a hub id when downloads are allowed."""
    path = Path(spec.location)
    if path.is_dir():
        return str(path), {"local_files_only": True}
    if spec.config.get("allow_download"):
        return spec.location, {}
    raise RewardModelError(
        f"reward model location {spec.location!r} is not a local folder, and config.allow_download "
        f"is not set, so it is not fetched from the hub"
    )


class RewardScorer:
    """Common parts: device, dtype, tensor preprocessing, tokenisation with a cache."""

    kind: str = ""
    text_batch: int = 256

    def __init__(self, spec: RewardSpec, model, tokenizer, preprocess_spec: PreprocessSpec):
        import torch

        self.spec = spec
        self.device = _device_of(spec.config)
        self.dtype = _dtype_of(spec.config, self.device)
        self.model = model.to(self.device, self.dtype).eval()
        self.tokenizer = tokenizer
        self.preprocess_spec = preprocess_spec
        self.max_text_tokens = int(spec.config.get("max_text_tokens", 0)) or None
        self._torch = torch

    def pixels(self, images) -> object:
        """Model input from PIL images, HxWx3 uint8 arrays, or an (N, H, W, 3) uint8 tensor."""
        if not isinstance(images, self._torch.Tensor):
            images = to_uint8_batch(images)
        return preprocess(images, self.preprocess_spec, device=self.device, dtype=self.dtype)

    def tokenize(self, texts: list[str]) -> tuple:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_tokens,
                             return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def prompt_logits(self, images: list, prompt_sets: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per image, the scores of its prompt set's prompts (original first), as float64."""
        return self.prompt_logits_start(images, prompt_sets).result()

    def prompt_logits_start(self, images: list, prompt_sets: Sequence[Sequence[str]]) -> PendingLogits:
        """``prompt_logits`` with the device's work queued, not waited for."""
        if len(images) != len(prompt_sets):
            raise ValueError(f"{len(images)} images but {len(prompt_sets)} prompt sets")
        if len(images) == 0:
            return PendingLogits.ready([])
        if any(len(s) == 0 for s in prompt_sets):
            raise ValueError("every prompt set needs at least the original prompt")
        with self._torch.inference_mode():
            values, columns, layout = self._prompt_values(self.pixels(images), prompt_sets)
            return PendingLogits(values, columns, layout)

    def _prompt_values(self, pixels, prompt_sets) -> tuple[object, list[list[int]], str]:
        """The batch's scores as one device tensor, with each image's columns (indexes into the
        unique texts): ``"matrix"``, an (images, texts) tensor; ``"flat"``, the pairs' scores
        one image after another."""
        raise NotImplementedError


class PendingLogits:
    """A batch's scores on their way from the device: the device-to-host copy is queued into
    page-locked memory behind the batch's work, and ``result()`` waits for it alone."""

    def __init__(self, values, columns: list[list[int]], layout: str):
        import torch

        self.columns, self.layout, self._event, self._done = columns, layout, None, None
        values = values.float()
        if values.device.type == "cuda":
            self._host = torch.empty(values.shape, dtype=torch.float32, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = values

    @classmethod
    def ready(cls, logits: list[np.ndarray]) -> PendingLogits:
        pending = cls.__new__(cls)
        pending._done = logits
        return pending

    def result(self) -> list[np.ndarray]:
        if self._done is None:
            if self._event is not None:
                self._event.synchronize()
            values = self._host.numpy().astype(np.float64)
            if self.layout == "matrix":
                self._done = _rows(values, self.columns)
            else:
                self._done = _split(values, self.columns)
            self._host = None
        return self._done


def _rows(values: np.ndarray, columns: list[list[int]]) -> list[np.ndarray]:
    """Row i's entries at columns[i]: one gather when every image has as many columns."""
    widths = {len(c) for c in columns}
    if len(widths) == 1:
        return list(np.take_along_axis(values, np.asarray(columns, dtype=np.intp), axis=1))
    return [values[i, cols] for i, cols in enumerate(columns)]


def _unique_texts(prompt_sets: Sequence[Sequence[str]]) -> tuple[list[str], list[list[int]]]:
    position: dict[str, int] = {}
    columns = []
    for texts in prompt_sets:
        columns.append([position.setdefault(t, len(position)) for t in texts])
    return list(position), columns


class DualEncoderScorer(RewardScorer):
    """CLIP-architecture models: image and text encoded apart, scores from one matmul."""

    text_cache_size = 200_000

    def __init__(self, *args, score_factor: Callable[[object], float], **kw):
        super().__init__(*args, **kw)
        self._text_embeddings: dict[str, object] = {}
        self.factor = float(score_factor(self.model))
        if self.max_text_tokens is None:
            self.max_text_tokens = int(self.model.config.text_config.max_position_embeddings)

    def encode_images(self, pixels):
        m = self.model
        pooled = m.vision_model(pixel_values=pixels).pooler_output
        return self._torch.nn.functional.normalize(m.visual_projection(pooled), dim=-1)

    def encode_texts(self, texts: list[str]):
        """Normalised text embeddings, each text encoded once per process."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_embeddings]
        if len(self._text_embeddings) + len(missing) > self.text_cache_size:
            self._text_embeddings.clear()
            missing = list(dict.fromkeys(texts))
        m = self.model
        for start in range(0, len(missing), self.text_batch):
            chunk = missing[start:start + self.text_batch]
            ids, mask = self.tokenize(chunk)
            pooled = m.text_model(input_ids=ids, attention_mask=mask).pooler_output
            emb = self._torch.nn.functional.normalize(m.text_projection(pooled), dim=-1)
            self._text_embeddings.update(zip(chunk, emb, strict=True))
        return self._torch.stack([self._text_embeddings[t] for t in texts])

    def _prompt_values(self, pixels, prompt_sets):
        unique, columns = _unique_texts(prompt_sets)
        img = self.encode_images(pixels)
        txt = self.encode_texts(unique)
        return img.float() @ txt.float().T * self.factor, columns, "matrix"


def _pairs(prompt_sets, columns) -> tuple[list[int], list[int]]:
    images, texts = [], []
    for i, cols in enumerate(columns):
        images.extend([i] * len(cols))
        texts.extend(cols)
    return images, texts


def _split(values: np.ndarray, columns) -> list[np.ndarray]:
    out, start = [], 0
    for cols in columns:
        out.append(values[start:start + len(cols)])
        start += len(cols)
    return out


class ItmScorer(RewardScorer):
    """Image-text matching heads. ``config["output"]``: "probability" (default: softmax of
    the two ITM logits, the "match" entry) or "logit" (log-odds of a match: l_match - l_no)."""

    pair_batch = 256

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.output = self.spec.config.get("output", "probability")
        if self.output not in ("probability", "logit"):
            raise RewardModelError(f"config.output must be 'probability' or 'logit', not {self.output!r}")

    def _match_score(self, itm_logits):
        itm_logits = itm_logits.float()
        if self.output == "probability":
            return itm_logits.softmax(dim=-1)[:, 1]
        return itm_logits[:, 1] - itm_logits[:, 0]

    def encode_images(self, pixels):
        return self.model.vision_model(pixel_values=pixels).last_hidden_state

    def _pair_itm_logits(self, image_states, ids, mask):
        raise NotImplementedError

    def _prompt_values(self, pixels, prompt_sets):
        unique, columns = _unique_texts(prompt_sets)
        states = self.encode_images(pixels)
        ids, mask = self.tokenize(unique)
        image_idx, text_idx = _pairs(prompt_sets, columns)
        image_idx_t = self._torch.tensor(image_idx, device=self.device)
        text_idx_t = self._torch.tensor(text_idx, device=self.device)
        scores = []
        for start in range(0, len(image_idx), self.pair_batch):
            ii, tt = image_idx_t[start:start + self.pair_batch], text_idx_t[start:start + self.pair_batch]
            scores.append(self._match_score(self._pair_itm_logits(states[ii], ids[tt], mask[tt])))
        return self._torch.cat(scores), columns, "flat"


class BlipItmScorer(ItmScorer):
    def _pair_itm_logits(self, image_states, ids, mask):
        m = self.model
        image_mask = self._torch.ones(image_states.shape[:-1], dtype=self._torch.long, device=self.device)
        hidden = m.text_encoder(input_ids=ids, attention_mask=mask, encoder_hidden_states=image_states,
                                encoder_attention_mask=image_mask).last_hidden_state
        return m.itm_head(hidden[:, 0, :])


class Blip2ItmScorer(ItmScorer):
    """BLIP-2 Q-Former matching head (``config["head"] = "itm"``, default) or the Q-Former
    feature similarity (``"itc"``: max over query tokens of the cosine, image and text apart)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.head = self.spec.config.get("head", "itm")
        if self.head not in ("itm", "itc"):
            raise RewardModelError(f"config.head must be 'itm' or 'itc', not {self.head!r}")

    def _pair_itm_logits(self, image_states, ids, mask):
        m, torch = self.model, self._torch
        queries = m.query_tokens.expand(image_states.shape[0], -1, -1)
        attention = torch.cat([torch.ones(queries.shape[:-1], dtype=mask.dtype, device=self.device), mask], dim=1)
        image_mask = torch.ones(image_states.shape[:-1], dtype=torch.long, device=self.device)
        embeds = m.embeddings(input_ids=ids, query_embeds=queries)
        hidden = m.qformer(query_embeds=embeds, query_length=queries.shape[1], attention_mask=attention,
                           encoder_hidden_states=image_states, encoder_attention_mask=image_mask).last_hidden_state
        return m.itm_head(hidden[:, :queries.shape[1], :].to(m.itm_head.weight.dtype)).mean(dim=1)

    def _prompt_values(self, pixels, prompt_sets):
        if self.head == "itm":
            return super()._prompt_values(pixels, prompt_sets)
        m, torch = self.model, self._torch
        unique, columns = _unique_texts(prompt_sets)
        states = self.encode_images(pixels)
        queries = m.query_tokens.expand(states.shape[0], -1, -1)
        image_mask = torch.ones(states.shape[:-1], dtype=torch.long, device=self.device)
        q = m.qformer(query_embeds=queries, encoder_hidden_states=states,
                      encoder_attention_mask=image_mask).last_hidden_state
        img = torch.nn.functional.normalize(m.vision_projection(q), dim=-1)  # (N, Q, D)
        ids, mask = self.tokenize(unique)
        t = m.qformer(query_embeds=m.embeddings(input_ids=ids), query_length=0, attention_mask=mask).last_hidden_state
        txt = torch.nn.functional.normalize(m.text_projection(t[:, 0, :]), dim=-1)  # (T, D)
        return torch.einsum("nqd,td->ntq", img.float(), txt.float()).amax(dim=-1), columns, "matrix"


def _load_hf(spec: RewardSpec, model_cls_name: str, default_size: int | None = None):
    import transformers
    from transformers import AutoTokenizer

    source, kw = _pretrained_source(spec)
    try:
        model = getattr(transformers, model_cls_name).from_pretrained(source, **kw)
        tokenizer = AutoTokenizer.from_pretrained(source, **kw)
    except (OSError, ValueError) as exc:
        raise RewardModelError(f"reward model {spec.kind!r} at {spec.location}: cannot load: {exc}") from exc
    size = default_size or int(model.config.vision_config.image_size)
    if Path(source).is_dir():
        pre = PreprocessSpec.from_folder(source, default_size=size)
    else:
        from transformers import AutoImageProcessor

        pre = PreprocessSpec.from_config(AutoImageProcessor.from_pretrained(source, **kw).to_dict(),
                                         default_size=size)
    return model, tokenizer, pre


@register("clip")
def _clip(spec: RewardSpec) -> RewardScorer:
    model, tok, pre = _load_hf(spec, "CLIPModel")
    scorer = DualEncoderScorer(spec, model, tok, pre, score_factor=lambda m: 1.0)  # cosine
    scorer.kind = "clip"
    return scorer


@register("pickscore")
def _pickscore(spec: RewardSpec) -> RewardScorer:
    model, tok, pre = _load_hf(spec, "CLIPModel")
    # PickScore = exp(logit_scale) * cosine / 100 (SPEC section 2)
    scorer = DualEncoderScorer(spec, model, tok, pre,
                               score_factor=lambda m: float(m.logit_scale.detach().float().exp()) / 100.0)
    scorer.kind = "pickscore"
    return scorer


@register("blip_itm")
def _blip(spec: RewardSpec) -> RewardScorer:
    model, tok, pre = _load_hf(spec, "BlipForImageTextRetrieval")
    scorer = BlipItmScorer(spec, model, tok, pre)
    scorer.kind = "blip_itm"
    return scorer


@register("blip2_itm")
def _blip2(spec: RewardSpec) -> RewardScorer:
    import transformers

    if not hasattr(transformers, "Blip2ForImageTextRetrieval"):
        raise MissingDependency(
            f"reward model kind 'blip2_itm' needs transformers with Blip2ForImageTextRetrieval "
            f"(this worker has transformers {transformers.__version__})"
        )
    model, tok, pre = _load_hf(spec, "Blip2ForImageTextRetrieval")
    scorer = Blip2ItmScorer(spec, model, tok, pre)
    scorer.kind = "blip2_itm"
    return scorer


class PackagePairScorer:
    """Adapter for reward packages that score (prompt, images) with their own model and
    preprocessing (ImageReward, HPSv2): one call per distinct text of the batch."""

    def __init__(self, kind: str, score: Callable[[str, list], Sequence[float]]):
        self.kind = kind
        self._score = score

    def prompt_logits(self, images: list, prompt_sets: Sequence[Sequence[str]]) -> list[np.ndarray]:
        from PIL import Image

        if len(images) != len(prompt_sets):
            raise ValueError(f"{len(images)} images but {len(prompt_sets)} prompt sets")
        pils = [Image.fromarray(a) for a in to_uint8_batch(images)]
        unique, columns = _unique_texts(prompt_sets)
        needed: dict[int, list[int]] = {}
        for i, cols in enumerate(columns):
            for c in cols:
                needed.setdefault(c, []).append(i)
        value: dict[tuple[int, int], float] = {}
        for c, image_ids in needed.items():
            scores = np.atleast_1d(np.asarray(self._score(unique[c], [pils[i] for i in image_ids]), dtype=float))
            value.update({(i, c): float(s) for i, s in zip(image_ids, scores, strict=True)})
        return [np.array([value[(i, c)] for c in cols]) for i, cols in enumerate(columns)]

    def prompt_logits_start(self, images: list, prompt_sets: Sequence[Sequence[str]]) -> PendingLogits:
        return PendingLogits.ready(self.prompt_logits(images, prompt_sets))


def _package_checkpoint(spec: RewardSpec, file_name: str) -> Path | None:
    """The local checkpoint of a package plug-in: ``spec.location`` itself, or ``file_name``
    in the folder it names. None when there is none but ``config["allow_download"]`` lets the
    package fetch its own; otherwise an error, as for the hub models (``_pretrained_source``):
    the packages download silently when given no local file."""
    path = Path(spec.location) if spec.location else None
    if path is not None and path.is_dir():
        path = path / file_name
    if path is not None and path.is_file():
        return path
    if spec.config.get("allow_download"):
        return None
    raise RewardModelError(
        f"reward model {spec.kind!r} location {spec.location!r} is not a local checkpoint file "
        f"(nor a folder holding {file_name!r}), and config.allow_download is not set, so the "
        f"{spec.kind} package is not left to download it"
    )


def _accepts(function, parameter: str) -> bool:
    """Whether ``function`` takes ``parameter`` (older package releases lack the local-path ones)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True  # no signature to read: let the call say
    return parameter in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@register("imagereward", requires=[("ImageReward", "image-reward")])
def _imagereward(spec: RewardSpec):
    """ImageReward from a local ``ImageReward.pt``, with the BLIP ``med_config.json`` from
    ``config["med_config"]`` or beside the checkpoint (``ImageReward.load`` fetches both from
    the hub otherwise)."""
    import ImageReward  # noqa: N813  (optional dependency)

    checkpoint = _package_checkpoint(spec, "ImageReward.pt")
    kw = {"device": _device_of(spec.config)}
    med_config = Path(spec.config["med_config"]) if spec.config.get("med_config") else None
    if med_config is None and checkpoint is not None:
        med_config = checkpoint.parent / "med_config.json"
    if med_config is not None and med_config.is_file():
        if not _accepts(ImageReward.load, "med_config"):
            raise MissingDependency(
                "reward model kind 'imagereward' with a local med_config needs image-reward 1.3 or "
                "later (ImageReward.load(med_config=...)); this worker's release always downloads it"
            )
        kw["med_config"] = str(med_config)
    elif not spec.config.get("allow_download"):
        raise RewardModelError(
            f"reward model 'imagereward' location {spec.location!r}: no med_config.json "
            f"(looked for {str(med_config)!r}; set config.med_config), and config.allow_download "
            f"is not set, so ImageReward is not left to download it"
        )
    name = str(checkpoint) if checkpoint is not None else (spec.location or "ImageReward-v1.0")
    try:
        model = ImageReward.load(name, **kw)
    except (OSError, RuntimeError) as exc:
        raise RewardModelError(f"reward model 'imagereward' at {spec.location}: cannot load: {exc}") from exc
    return PackagePairScorer("imagereward", lambda text, pils: model.score(text, pils))


@register("hpsv2", requires=[("hpsv2", "hpsv2")])
def _hpsv2(spec: RewardSpec):
    """HPSv2 from a local checkpoint (``HPS_v2.1_compressed.pt`` or ``HPS_v2_compressed.pt``,
    per ``config["hps_version"]``), passed as ``cp``: without it ``hpsv2.score`` downloads."""
    import hpsv2  # optional dependency

    version = spec.config.get("hps_version", "v2.1")
    file_name = {"v2.0": "HPS_v2_compressed.pt"}.get(version, "HPS_v2.1_compressed.pt")
    checkpoint = _package_checkpoint(spec, file_name)
    if checkpoint is None:
        return PackagePairScorer("hpsv2", lambda text, pils: hpsv2.score(pils, text, hps_version=version))
    if not _accepts(hpsv2.score, "cp"):
        raise MissingDependency(
            "reward model kind 'hpsv2' with a local checkpoint needs hpsv2 1.2 or later "
            "(hpsv2.score(cp=...)); this worker's release always downloads it"
        )
    cp = str(checkpoint)
    return PackagePairScorer("hpsv2", lambda text, pils: hpsv2.score(pils, text, cp=cp, hps_version=version))
