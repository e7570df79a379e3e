import json
import time

from django.core.management.base import BaseCommand, CommandError

from annotate.management.options import by_flags, row_named
from annotate.models import Checkpoint, Dataset, GenerationJob
from annotate.services.generation import GenerationError, generation_job_create


def _seeds(text: str) -> list[int]:
    """"0,1,2" or "0-49" (or a mix) -> seeds."""
    seeds = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        try:
            seeds.extend(range(int(low), int(high) + 1) if dash else [int(part)])
        except ValueError:
            raise CommandError(f"--seeds: {part!r} is not a seed or a range like 0-49") from None
    return seeds


class Command(BaseCommand):
    help = ("Generate images of a dataset's prompts with a registered checkpoint: a generation job on the gpu "
            "queue (--here: in this process). Idempotent: a rerun makes only the missing images.")

    def add_arguments(self, parser):
        parser.add_argument("--checkpoint", required=True, help="name of a registered checkpoint")
        parser.add_argument("--dataset", required=True)
        parser.add_argument("--seeds", default="0", help='"0,1,2" or "0-49"')
        parser.add_argument("--images-per-seed", type=int, default=1)
        parser.add_argument("--steps", type=int, default=25)
        parser.add_argument("--guidance", type=float, default=7.5)
        parser.add_argument("--width", type=int, default=512)
        parser.add_argument("--height", type=int, default=512)
        parser.add_argument("--scheduler", default="", help="ddim, euler_a, dpm++, ... (default: the checkpoint's)")
        parser.add_argument("--dtype", default="float16", choices=GenerationJob.DType.values)
        parser.add_argument("--here", action="store_true", help="run in this process instead of a worker")
        parser.add_argument("--wait", action="store_true", help="wait for the worker and show progress")

    def handle(self, *args, **o):
        checkpoint = row_named(Checkpoint, "--checkpoint", o["checkpoint"], "checkpoint (register_checkpoint)",
                               name=o["checkpoint"])
        dataset = row_named(Dataset, "--dataset", o["dataset"], "dataset", name=o["dataset"])
        try:
            job = generation_job_create(
                checkpoint=checkpoint, dataset=dataset, seeds=_seeds(o["seeds"]), images_per_seed=o["images_per_seed"],
                width=o["width"], height=o["height"], num_inference_steps=o["steps"], guidance_scale=o["guidance"],
                scheduler=o["scheduler"], dtype=o["dtype"], enqueue=not o["here"],
            )
        except GenerationError as exc:
            raise CommandError(f"{by_flags(str(exc), {'num_inference_steps': '--steps'})}\nNothing was written.") from None
        if o["here"]:
            from workers.jobs import generation_job_execute

            generation_job_execute(job.id)
        elif o["wait"]:
            self._follow(job)
        job.refresh_from_db()
        self.stdout.write(json.dumps({"job": job.id, "status": job.status, "done_images": job.done_images,
                                      "total_images": job.total_images, "error": job.error}))
        if job.status == GenerationJob.Status.FAILED:
            raise CommandError(f"job {job.id} failed: {job.error}")

    def _follow(self, job: GenerationJob) -> None:
        finished = (GenerationJob.Status.SUCCEEDED, GenerationJob.Status.FAILED, GenerationJob.Status.CANCELLED)
        while True:
            job.refresh_from_db()
            self.stderr.write(f"job {job.id}: {job.status} {job.done_images}/{job.total_images}")
            if job.status in finished:
                return
            time.sleep(2)
