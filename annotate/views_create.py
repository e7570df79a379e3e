"""New studies from the browser (researchers): a pairwise study of two or more checkpoints,
a rating study of a dataset's images (TIA2's, or checkpoints'), or the paper's best-of-n
study (raw reward against TextNorm). "Preview" says how many items and judgments the study
will take, writing nothing; "Create" makes it as a draft, opened from its page."""
from django import forms
from django.contrib.auth import get_user_model
from django.shortcuts import redirect, render
from django.urls import path, reverse

from annotate.models import Checkpoint, ContrastivePromptSet, Dataset, RewardModel, RewardScore, Study
from annotate.roles import ANNOTATORS
from annotate.services.studies import StudyError
from annotate.services.study_plans import study_create, study_preview
from annotate.views import researcher_required

KINDS = {"pairwise": "Pairwise: checkpoints side by side", "rating": "Rating: one image at a time",
         "best_of_n": "Best-of-n: raw reward against TextNorm"}


class _StudyForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="annotators see it: name no checkpoint in it")
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.order_by("name"))
    redundancy = forms.IntegerField(min_value=1, max_value=100, initial=3, help_text="judgments per item")
    gold_share = forms.FloatField(min_value=0, max_value=1, initial=0.0,
                                  help_text="share of items with a known answer, to check annotators")
    item_order = forms.ChoiceField(choices=Study.ItemOrder.choices, initial=Study.ItemOrder.CLOSEST_TO_COMPLETION)
    items_per_annotator = forms.IntegerField(min_value=1, required=False, help_text="empty: no limit")
    max_open_leases = forms.IntegerField(min_value=1, max_value=20, initial=3, required=False,
                                         help_text="items one annotator may hold at once (the page holds two)")
    instructions = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                                   help_text="Markdown, shown to annotators")
    question = forms.CharField(max_length=300, required=False, help_text="empty: the standard question")
    members = forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.none(), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="annotators who may work on it (more can be added later)")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["members"].queryset = (get_user_model().objects.filter(groups__name=ANNOTATORS, is_active=True)
                                           .exclude(username__startswith="crowd-").order_by("username"))

    def service_fields(self) -> dict:
        data = dict(self.cleaned_data)
        data["members"] = [u.username for u in data.pop("members")]
        if not data.get("items_per_annotator"):
            data["items_per_annotator"] = None
        if not data.get("max_open_leases"):
            data.pop("max_open_leases", None)  # the model's default
        return data


class PairwiseForm(_StudyForm):
    checkpoints = forms.ModelMultipleChoiceField(queryset=Checkpoint.objects.order_by("name"),
                                                 widget=forms.CheckboxSelectMultiple, help_text="two or more")
    pairing = forms.ChoiceField(choices=[("matched", "Matched: same seed and index"),
                                         ("random", "Random: one image of each per prompt")])

    def clean_checkpoints(self):
        checkpoints = self.cleaned_data["checkpoints"]
        if len(checkpoints) < 2:
            raise forms.ValidationError("Choose two or more checkpoints.")
        return list(checkpoints)


class RatingForm(_StudyForm):
    checkpoints = forms.ModelMultipleChoiceField(
        queryset=Checkpoint.objects.order_by("name"), required=False, widget=forms.CheckboxSelectMultiple,
        help_text="none: the dataset's own images (TIA2's)")
    rating_scale = forms.ChoiceField(choices=Study.RatingScale.choices)

    def service_fields(self) -> dict:
        data = super().service_fields()
        data["checkpoints"] = list(data["checkpoints"]) or None
        return data


class BestOfNForm(_StudyForm):
    parent = forms.ModelChoiceField(queryset=Checkpoint.objects.exclude(backend=Checkpoint.Backend.BEST_OF_N)
                                    .order_by("name"), help_text="the checkpoint whose images are chosen from")
    reward_model = forms.ModelChoiceField(queryset=RewardModel.objects.order_by("name"))
    n = forms.IntegerField(min_value=1, max_value=1000, initial=4, help_text="images per prompt to choose from")
    prompt_set_source = forms.ChoiceField(choices=ContrastivePromptSet.Source.choices)
    prompt_set_version = forms.CharField(max_length=64, required=False, help_text="empty: the newest")
    normalize = forms.ChoiceField(choices=RewardScore.Normalize.choices)
    scale = forms.FloatField(min_value=1e-6, initial=1.0, help_text="s, for min-max")
    temperature = forms.FloatField(min_value=1e-6, initial=1.0, help_text="tau, for temperature")


FORMS = {"pairwise": PairwiseForm, "rating": RatingForm, "best_of_n": BestOfNForm}


@researcher_required
def study_new(request):
    kind = request.GET.get("kind") or request.POST.get("kind") or "pairwise"
    if kind not in FORMS:
        kind = "pairwise"
    form = FORMS[kind](request.POST or None)
    preview = error = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            fields = form.service_fields() | {"kind": kind, "created_by": request.user}
            try:
                if request.POST.get("action") == "create":
                    study = study_create(**fields)
                    return redirect(reverse("study-detail", args=[study.id]))
                preview = study_preview(**fields)
            except StudyError as exc:
                error, status = str(exc), 400
        else:
            status = 400
    return render(request, "dashboard/create_study.html", {
        "form": form, "kind": kind, "kinds": KINDS, "preview": preview, "error": error,
    }, status=status)


urlpatterns = [path("studies/new/", study_new, name="study-create")]
