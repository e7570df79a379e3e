import json

from django.core.management.base import BaseCommand, CommandError

from annotate.services.tia2_report import Ensemble, Tia2ReportError, tia2_report

METRICS = ["auroc", "auprc", "ap@5", "ap@10", "ap@25", "spearman", "kendall"]


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


class Command(BaseCommand):
    help = ("TIA2 in the database: per category the prompt and image counts, majority-positive rates and "
            "Fleiss' kappa, and for every reward model with scores the reward-vs-human table (raw and TextNorm).")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="one JSON document instead of tables")
        parser.add_argument("--per-prompt", action="store_true",
                            help="add each prompt's text, positive rate and metrics")
        parser.add_argument("--ensemble", action="append", default=[], metavar="MODEL,MODEL[,...]",
                            help="a row for the ensemble of these reward models' TextNorm scores (SPEC section 2: "
                                 "TextNorm's published one is ImageReward + PickScore); repeatable")
        parser.add_argument("--method", choices=["mean", "uncertainty"], default="mean",
                            help="ensemble: the mean, or the mean minus lambda times the variance")
        parser.add_argument("--lam", type=float, default=0.1, help="lambda for --method uncertainty")

    def handle(self, *args, **options):
        as_json, per_prompt = options["json"], options["per_prompt"]
        try:
            ensembles = [Ensemble(tuple(m.strip() for m in spec.split(",") if m.strip()), options["method"],
                                  options["lam"] if options["method"] == "uncertainty" else 0.0)
                         for spec in options["ensemble"]]
            report = tia2_report(per_prompt=per_prompt, ensembles=ensembles)
        except Tia2ReportError as exc:
            raise CommandError(str(exc)) from exc
        if as_json:
            self.stdout.write(json.dumps(report, indent=2))
            return
        w = self.stdout.write
        w("Human labels (SPEC.md section 1; -1 counts as 0 for kappa)")
        w(f"{'category':<15}{'prompts':>8}{'images':>8}{'label -1':>9}{'majority +':>12}{'rate':>7}{'kappa':>7}")
        for c in report["categories"]:
            w(f"{c['category']:<15}{c['prompts']:>8}{c['images']:>8}{c['labels_missing']:>9}"
              f"{c['majority_positive_images']:>12}{_f(c['majority_positive_rate']):>7}{_f(c['fleiss_kappa']):>7}")
        if not report["reward_models"]:
            w("\nNo reward scores on TIA2 images yet (python manage.py score_images --dataset tia2-<category> ...).")
        for model in report["reward_models"]:
            w(f"\n{model['score']}  ({model['images_scored']} of {model['images_total']} images scored)")
            w(f"{'category':<15}{'kept':>5}{'dropped':>8}" + "".join(f"{m:>9}" for m in METRICS))
            for c in model["categories"]:
                means = c["means"].get(model["score"], {})
                w(f"{c['category']:<15}{c['n_kept']:>5}{c['n_dropped']:>8}"
                  + "".join(f"{_f(means.get(m)):>9}" for m in METRICS))
            for c in model["categories"]:
                if c["dropped"]:
                    reasons = ", ".join(f"{n} {reason}" for reason, n in c["dropped"].items())
                    w(f"  {c['category']}: dropped {reasons}")
            if per_prompt:
                for p in model["prompts"]:
                    metrics = p["metrics"].get(model["score"], {})
                    w(f"  [{p['category']}] {p['text']!r}: positive {_f(p['positive_rate'], 2)}"
                      + ("" if p["kept"] else f" (dropped: {p['drop_reason']})")
                      + "".join(f" {m} {_f(metrics.get(m))}" for m in METRICS if metrics))
        w("\n" + report["protocol"])

