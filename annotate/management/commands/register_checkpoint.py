import json

from django.core.management.base import BaseCommand, CommandError

from annotate.management.options import by_flags
from annotate.services.checkpoints import REGISTRABLE, CheckpointRegistrationError, checkpoint_register

_FLAGS = {"name": "NAME", "config.error_rate": "--config error_rate"}


class Command(BaseCommand):
    help = ("Register a checkpoint to generate from: a diffusers folder, a single .safetensors/.ckpt file, a base "
            "pipeline plus LoRA weights, or the procedural demo generator. Its weights are fingerprinted now; "
            "registering the same name again with the same weights does nothing.")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--backend", required=True, choices=list(REGISTRABLE))
        parser.add_argument("--location", default="", help="folder, file, or LoRA weights")
        parser.add_argument("--base-model", default="", help="base diffusers folder (or hub id) for --backend lora")
        parser.add_argument("--config", default="{}", help='JSON, e.g. {"batch_size": 8, "compile": true, '
                            '"lora_scale": 0.8} or {"error_rate": 0.2} for procedural')
        parser.add_argument("--description", default="")

    def handle(self, *args, name, backend, location, base_model, config, description, **options):
        try:
            config = json.loads(config)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config: not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise CommandError("--config: must be a JSON object")
        try:
            checkpoint = checkpoint_register(name=name, backend=backend, location=location, base_model=base_model,
                                             config=config, description=description)
        except CheckpointRegistrationError as exc:
            raise CommandError(f"{by_flags(str(exc), _FLAGS)}\nNothing was written.") from None
        self.stdout.write(json.dumps({"id": checkpoint.id, "name": checkpoint.name, "backend": checkpoint.backend,
                                      "fingerprint": checkpoint.fingerprint}))
