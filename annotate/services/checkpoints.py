"""Checkpoints: registering one (paths checked, weights fingerprinted) and its fingerprint.

A checkpoint's fingerprint is taken over its weights' bytes when it is registered: a worker
keeps a loaded pipeline under it, so new weights must come as a new checkpoint (a name that
already stands for other weights is refused), never as files overwritten in place.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from django.db import transaction

from annotate.audit import audit
from annotate.models import Checkpoint
from annotate.services.paths import PathNotAllowed, input_path_check

REGISTRABLE = (Checkpoint.Backend.DIFFUSERS, Checkpoint.Backend.SINGLE_FILE, Checkpoint.Backend.LORA,
               Checkpoint.Backend.PROCEDURAL)


class CheckpointRegistrationError(ValueError):
    """Bad input for a checkpoint; the message names the field."""


def _hash_path(digest, path: Path) -> None:
    """A folder's files (relative names and bytes) or one file's bytes into ``digest``."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)


def checkpoint_fingerprint(*, backend: str, location: str = "", base_model: str = "", config: dict | None = None) -> str:
    """sha256 over the backend, the config and the weights' bytes (the folder's files, the
    single file, the LoRA file and a local base model); a hub id counts by its name."""
    digest = hashlib.sha256(json.dumps([backend, config or {}], sort_keys=True, default=str).encode())
    for value in (location, base_model):
        if not value:
            continue
        path = Path(value)
        if path.exists():
            _hash_path(digest, path)
        else:
            digest.update(b"hub:" + value.encode())
    return digest.hexdigest()


def _check_paths(backend: str, location: str, base_model: str, config: dict) -> None:
    def local(field: str, value: str) -> Path:
        try:
            return input_path_check(Path(value), what=field)
        except PathNotAllowed as exc:
            raise CheckpointRegistrationError(f"{field}: {exc}") from None

    if backend == Checkpoint.Backend.PROCEDURAL:
        rate = config.get("error_rate", 0.0)
        if not isinstance(rate, int | float) or not 0.0 <= float(rate) <= 1.0:
            raise CheckpointRegistrationError(f"config.error_rate: must be a number within [0, 1], not {rate!r}")
        return
    if not location:
        raise CheckpointRegistrationError(f"location: a {backend} checkpoint needs one")
    path = local("location", location)
    if backend == Checkpoint.Backend.DIFFUSERS and not (path / "model_index.json").is_file():
        raise CheckpointRegistrationError(f"location: {location} is not a diffusers folder (no model_index.json)")
    if backend == Checkpoint.Backend.SINGLE_FILE:
        if not path.is_file():
            raise CheckpointRegistrationError(f"location: {location} is not a file (.safetensors or .ckpt)")
        if base_model and Path(base_model).exists():  # the pipeline config it borrows
            local("base_model", base_model)
    if backend == Checkpoint.Backend.LORA:
        if not path.exists():
            raise CheckpointRegistrationError(f"location: {location}: no such LoRA file or folder")
        if not base_model:
            raise CheckpointRegistrationError("base_model: a LoRA checkpoint needs its base pipeline")
        base = Path(base_model)
        if base.exists() or base.is_absolute() or base_model.startswith("."):
            base = local("base_model", base_model)
            if not (base / "model_index.json").is_file():
                raise CheckpointRegistrationError(f"base_model: {base_model} is not a diffusers folder")
        elif not config.get("allow_download"):
            raise CheckpointRegistrationError(
                f"base_model: {base_model} is not a local folder, and config.allow_download is not set")


@transaction.atomic
def checkpoint_register(*, name: str, backend: str, location: str = "", base_model: str = "",
                        config: dict | None = None, description: str = "") -> Checkpoint:
    """Register a checkpoint, or return the one already registered under ``name`` with the
    same weights and settings. Nothing is written on bad input."""
    if config is not None and not isinstance(config, dict):
        raise CheckpointRegistrationError(f"config: must be a JSON object ({{...}}), not {type(config).__name__}")
    config = dict(config or {})
    name = (name or "").strip()
    if not name:
        raise CheckpointRegistrationError("name: required")
    if backend == Checkpoint.Backend.BEST_OF_N:
        raise CheckpointRegistrationError("backend: best_of_n checkpoints are made by best-of-n selection "
                                          "(manage.py best_of_n), not registered")
    if backend not in REGISTRABLE:
        raise CheckpointRegistrationError(f"backend: must be one of {', '.join(REGISTRABLE)}, not {backend!r}")
    _check_paths(backend, location, base_model, config)
    fingerprint = checkpoint_fingerprint(backend=backend, location=location, base_model=base_model, config=config)
    existing = Checkpoint.objects.filter(name=name).first()
    if existing is not None:
        if existing.fingerprint != fingerprint:
            raise CheckpointRegistrationError(
                f"name: {name!r} already stands for other weights or settings (fingerprint "
                f"{existing.fingerprint[:12] or 'none'}, these are {fingerprint[:12]}); register them under a new name")
        return existing
    checkpoint = Checkpoint.objects.create(name=name, backend=backend, location=location, base_model=base_model,
                                           config=config, fingerprint=fingerprint, description=description)
    audit(None, "checkpoint.register", checkpoint, backend=backend, fingerprint=fingerprint)
    return checkpoint


def checkpoint_fingerprint_ensure(checkpoint: Checkpoint) -> Checkpoint:
    """Give a checkpoint entered without the service (the admin) its fingerprint, once."""
    if checkpoint.fingerprint or checkpoint.backend == Checkpoint.Backend.BEST_OF_N:
        return checkpoint
    checkpoint.fingerprint = checkpoint_fingerprint(backend=checkpoint.backend, location=checkpoint.location,
                                                    base_model=checkpoint.base_model, config=checkpoint.config)
    Checkpoint.objects.filter(pk=checkpoint.pk, fingerprint="").update(fingerprint=checkpoint.fingerprint)
    return checkpoint
