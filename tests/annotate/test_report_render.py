"""How a report shows its figures (annotate.services.report_render), through report_render on
real study data; edge cases (a separated checkpoint, a tiny p, missing intervals) are set
by hand on a copy of that data."""
import copy
import csv
import io
import re
from html import escape
from html.parser import HTMLParser

import pytest

from annotate.services.reports import report_render, study_report_data
from tests.annotate.test_reports import alpha_wins, answer_all, likert_study
from tests.factories import annotators, open_pairwise

pytestmark = pytest.mark.django_db


# ------------------------------------------------------------------------------------ data
def pairwise_data(pick=alpha_wins, prompts: int = 12, checkpoints=("alpha-ckpt", "beta-ckpt")) -> dict:
    """Two annotators answer every item of a study with one item per prompt and pair (12 prompts:
    enough for the prompt bootstrap and a verdict; 2 annotators: too few for the annotator bootstrap)."""
    users = annotators(2)
    study = open_pairwise(members=users, prompts=prompts, per_prompt=1, redundancy=2, checkpoints=checkpoints)
    answer_all(study, users, pick)
    return study_report_data(study=study, rounds=200, seed=1)


def split_by_prompt(item, a_is_left):
    """alpha's image wins on even prompts, beta's on odd ones: a win rate of 0.5, no separation."""
    alpha_should_win = item.prompt.source_index % 2 == 0
    return alpha_wins(item, a_is_left) if alpha_should_win else ("right" if alpha_wins(item, a_is_left) == "left"
                                                                  else "left")


def likert_data() -> dict:
    """alpha's images get 5s and 4s; beta's a 3 from one annotator (left out) and a 1 from the other."""
    return study_report_data(study=likert_study())


# ---------------------------------------------------------------------------------- reading
class _Tables(HTMLParser):
    """Every table of a page: its caption, its head cells and its body rows, each cell as
    (tag, scope, text)."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell, self.part = [], None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"caption": None, "head": [], "body": []})
            self.part = "body"  # rows outside a <thead> are body rows
        elif tag == "caption":
            self.tables[-1]["caption"] = ""
            self.cell = ["caption", None, ""]
        elif tag == "thead":
            self.part = "head"
        elif tag == "tbody":
            self.part = "body"
        elif tag == "tr" and self.part == "body":
            self.tables[-1]["body"].append([])
        elif tag in ("th", "td"):
            self.cell = [tag, dict(attrs).get("scope"), ""]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[2] += data

    def handle_endtag(self, tag):
        if tag == "caption":
            self.tables[-1]["caption"] = " ".join(self.cell[2].split())
            self.cell = None
        elif tag in ("th", "td") and self.cell is not None:
            cell = (self.cell[0], self.cell[1], " ".join(self.cell[2].split()))
            target = self.tables[-1]["head"] if self.part == "head" else self.tables[-1]["body"][-1]
            target.append(cell)
            self.cell = None
        elif tag == "thead":
            self.part = "body"


def tables(html: str) -> list[dict]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def table_cells(html: str, caption_start: str) -> tuple[list[str], list[list[str]]]:
    """The head and the body rows' cell texts of the table whose caption starts so."""
    table = next(t for t in tables(html) if (t["caption"] or "").startswith(caption_start))
    return [text for _, _, text in table["head"]], [[text for _, _, text in row] for row in table["body"]]


def table_rows(html: str, caption_start: str) -> list[dict]:
    """The body rows of the table whose caption starts so, as {column header: cell text}."""
    head, rows = table_cells(html, caption_start)
    return [dict(zip(head, row)) for row in rows]


def csv_block(text: str, *header_start: str) -> list[dict]:
    """The rows of the CSV block whose header starts with these names, as dicts."""
    rows = list(csv.reader(io.StringIO(text)))
    at = next(k for k, row in enumerate(rows) if tuple(row[:len(header_start)]) == header_start)
    block = []
    for row in rows[at + 1:]:
        if not row:
            break
        block.append(dict(zip(rows[at], row)))
    return block


def html_of(data: dict) -> str:
    return report_render(data, "html").decode()


def csv_of(data: dict) -> str:
    return report_render(data, "csv").decode()


def section(html: str, heading: str) -> str:
    """The page from an <h2> to the next one."""
    start = html.index(f"<h2>{heading}</h2>")
    end = html.find("<h2", start + 1)
    return html[start:end if end > 0 else None]


# ------------------------------------------------------------------------------------ tests
def test_each_pair_has_a_verdict_in_words_from_the_prompt_bootstrap_and_the_sign_test_is_vote_level():
    data = pairwise_data()
    pair = data["pairwise"]["pairs"][0]
    assert pair["verdict"] == "a better"
    html = html_of(data)
    [row] = table_rows(html, "Verdict per pair")
    assert row == {**row, "A": "alpha-ckpt", "B": "beta-ckpt", "Verdict": "alpha-ckpt better", "prompts": "12",
                   "annotators": "2", "prompt bootstrap p": f"{pair['bootstrap_p']:.4f}",
                   "bootstrap Holm p": f"{pair['bootstrap_holm_p']:.4f}"}
    [votes] = table_rows(html, "Votes per pair, with vote-level statistics (descriptive")
    assert votes["sign test p (votes)"] == "<0.0001"
    methods = " ".join(section(html, "Methods").split())
    assert "Verdict per pair" in methods and "Sign test (vote-level, descriptive)" in methods
    assert "the verdict does not use it" in methods
    words = {"b better": "beta-ckpt better", "too few prompts": "too few prompts to say",
             "not distinguishable": "not distinguishable", "not compared": "not compared"}
    for verdict, shown in words.items():
        edited = copy.deepcopy(data)
        edited["pairwise"]["pairs"][0]["verdict"] = verdict
        assert table_rows(html_of(edited), "Verdict per pair")[0]["Verdict"] == shown


def test_the_csv_gives_verdict_clusters_both_cluster_intervals_the_bootstrap_test_and_vote_intervals():
    data = pairwise_data(split_by_prompt)
    pair = data["pairwise"]["pairs"][0]
    text = csv_of(data)
    [row] = csv_block(text, "a", "b", "verdict")
    assert row == {**row, "verdict": "not distinguishable", "n": "24", "prompts": "12", "annotators": "2",
                   "wins_a": "12", "wins_b": "12", "ties": "0",
                   "prompt_bootstrap_low": f"{pair['bootstrap_prompt'][0]:.4f}",
                   "annotator_bootstrap_low": "", "annotator_bootstrap_high": "",  # 2 annotators: none
                   "bootstrap_p": f"{pair['bootstrap_p']:.6g}",
                   "bootstrap_holm_p": f"{pair['bootstrap_holm_p']:.6g}",
                   "sign_test_p": "1", "sign_test_holm_p": "1"}
    ratings = {r["model"]: r for r in data["pairwise"]["bradley_terry"]["ratings"]}
    for r in csv_block(text, "model", "status", "elo"):
        assert r["status"] == "ok" and r["elo_vote_low"] == f"{ratings[r['model']]['elo_ci_vote'][0]:.1f}"
        assert r["elo_prompt_high"] == f"{ratings[r['model']]['elo_ci_prompt'][1]:.1f}"
    html = html_of(data)
    assert table_rows(html, "Verdict per pair")[0]["annotator bootstrap 95%"] == "n/a"


def test_warnings_come_first_in_the_html_and_as_a_block_in_the_csv():
    data = pairwise_data(prompts=4)
    assert len(data["warnings"]) >= 3  # open; 4 prompts; 2 annotators
    html = html_of(data)
    box = re.search(r'<section class="warnings" role="note"[^>]*>(.*?)</section>', html, re.S)
    assert box and box.start() < html.index("<h2>Inputs</h2>")
    items = [" ".join(x.split()) for x in re.findall(r"<li>(.*?)</li>", box.group(1), re.S)]
    assert items == [escape(n) for n in data["warnings"]]
    assert [r["warning"] for r in csv_block(csv_of(data), "warning")] == data["warnings"]


def test_a_separated_checkpoint_is_said_in_words_not_shown_as_a_measured_elo():
    data = pairwise_data(checkpoints=("alpha-ckpt", "beta-ckpt", "gamma-ckpt"))  # alpha never lost
    ratings = {r["model"]: r for r in data["pairwise"]["bradley_terry"]["ratings"]}
    assert [r["status"] for r in ratings.values()] == ["above", "ok", "ok"]
    html = html_of(data)
    rows = table_cells(html, "Ratings on the Elo scale")[1]
    # the words span the Elo and interval columns; the rank columns follow
    assert rows[0] == ["alpha-ckpt", "above all others (never lost)", "1", "1"]
    assert rows[1][1] == f"{ratings['beta-ckpt']['elo']:.0f}"
    assert f"{ratings['alpha-ckpt']['elo']:.0f}" not in section(html, "Bradley-Terry ratings")
    assert "alpha-ckpt: above all others (never lost)" in html  # the plot's text alternative
    by_model = {r["model"]: r for r in csv_block(csv_of(data), "model", "status", "elo")}
    assert [by_model["alpha-ckpt"][k] for k in ("status", "elo", "elo_prompt_low", "elo_vote_high", "rank")] == [
        "above", "", "", "", "1"]

    edited = copy.deepcopy(data)
    alpha, beta, gamma = edited["pairwise"]["bradley_terry"]["ratings"]
    for status, words in (("below", "below all others (never won)"),
                          ("unidentified", "not placed: its comparisons do not order it against the others"),
                          ("no_comparisons", "never compared")):
        gamma.update(status=status, wins=0.0)
        rows = table_cells(html_of(edited), "Ratings on the Elo scale")[1]
        # beta, the one checkpoint left measured, is the scale's anchor: 1000 by definition
        assert (rows[2][1], rows[1][1]) == (words, "Elo 1000 by definition (the scale's anchor; the others are "
                                                   "placed beyond it)")
    alpha["losses"] = 2.0  # lost, within its own group above the others
    assert table_cells(html_of(edited), "Ratings on the Elo scale")[1][0][1] == \
        "above the main group (never lost to it)"


def test_p_values_missing_values_and_counts_are_written_for_their_reader():
    data = pairwise_data()
    pair = data["pairwise"]["pairs"][0]
    pair.update(sign_test_p=5.3e-8, holm_p=None, bootstrap_prompt=[None, None], bootstrap_p=None)
    html = html_of(data)
    [votes] = table_rows(html, "Votes per pair")
    assert (votes["sign test p (votes)"], votes["sign test Holm p"]) == ("<0.0001", "n/a")
    [verdict] = table_rows(html, "Verdict per pair")
    assert (verdict["prompt bootstrap 95%"], verdict["prompt bootstrap p"]) == ("n/a", "n/a")
    assert not re.search(r">\s*–\s*<|>\s*None\s*<", html)  # no bare dash, no None
    text = csv_of(data)
    [row] = csv_block(text, "a", "b", "verdict")
    assert (row["sign_test_p"], row["sign_test_holm_p"], row["prompt_bootstrap_low"], row["bootstrap_p"]) == (
        "5.3e-08", "", "", "")
    assert all(re.fullmatch(r"\d+", row[k]) for k in ("n", "prompts", "annotators", "wins_a", "wins_b", "ties"))
    [inputs] = csv_block(text, "study", "kind")
    assert inputs["confidence"] == "0.95" and inputs["bootstrap_rounds"] == "200"
    data["pairwise"]["inputs"]["confidence"] = 0.9  # stated as computed, not assumed
    assert csv_block(csv_of(data), "study", "kind")[0]["confidence"] == "0.9"
    assert "Wilson 90%" in table_rows(html_of(data), "Votes per pair")[0]


def test_cohens_kappa_and_the_leave_one_out_majority_are_in_the_html_and_the_csv():
    data = pairwise_data(split_by_prompt)
    agreement = data["agreement"]
    [cohen] = agreement["cohen_kappa"]
    html, text = html_of(data), csv_of(data)
    [row] = table_cells(html, "Cohen's kappa per pair of annotators")[1]
    assert row[:4] == [cohen["a"], cohen["b"], f"{cohen['value']:.3f}", str(cohen["n_items"])]
    loo = {x["annotator"]: x for x in agreement["loo_majority"]}
    shown = {r["Annotator"]: r for r in table_rows(html, "Leave-one-out majority")}
    assert set(shown) == set(loo) == {"ann0", "ann1"}  # usernames
    for name, x in loo.items():
        assert (shown[name]["compared"], shown[name]["agreed"]) == (str(x["n_compared"]), str(x["n_agree"]))
        assert shown[name]["rate"] == ("n/a" if x["rate"] is None else f"{x['rate']:.3f}")
    [c] = csv_block(text, "annotator_a", "annotator_b", "cohen_kappa")
    assert [c["annotator_a"], c["annotator_b"], c["cohen_kappa"]] == [cohen["a"], cohen["b"],
                                                                       f"{cohen['value']:.4f}"]
    assert {r["annotator"]: r["n_agree"] for r in csv_block(text, "annotator", "n_rated")} == {
        name: str(x["n_agree"]) for name, x in loo.items()}


def test_a_rating_report_has_its_own_methods_verdicts_and_counts_the_threes():
    data = likert_data()
    html = html_of(data)
    methods = " ".join(section(html, "Methods").split())
    assert "Aligned rate" in methods and "4 and 5 count as aligned" in methods and "a 3 is neither" in methods
    assert "Verdict per pair: the difference of the two aligned rates" in methods
    assert not re.search(r"Bradley-Terry|[Ss]ign test|Win rate|ties / 2|votes?\b", methods)
    inputs = {r["Input"]: r["Value"] for r in table_rows(html, "What the figures are computed from")}
    assert (inputs["Bootstrap rounds"], inputs["Seed"]) == ("1000", "0")  # the prompt bootstrap uses them
    rows = {r["Checkpoint"]: r for r in table_rows(html, "Share of each checkpoint")}
    assert (rows["beta-ckpt"]["3s left out"], rows["alpha-ckpt"]["3s left out"]) == ("3", "0")
    assert (rows["beta-ckpt"]["prompts"], rows["beta-ckpt"]["prompt bootstrap 95%"]) == ("3", "n/a")
    [pair] = table_rows(html, "Verdict per pair of checkpoints")
    assert pair == {**pair, "A": "alpha-ckpt", "B": "beta-ckpt", "Verdict": "too few prompts to say",
                    "shared prompts": "3", "difference (A − B)": "+1.000", "prompt bootstrap 95%": "n/a"}
    text = csv_of(data)
    [inputs] = csv_block(text, "study", "kind")
    assert (inputs["bootstrap_rounds"], inputs["seed"], inputs["confidence"]) == ("1000", "0", "0.95")
    assert {r["model"]: r["neutral_left_out"] for r in csv_block(text, "model", "n", "aligned")} == {
        "alpha-ckpt": "0", "beta-ckpt": "3"}
    [pair] = csv_block(text, "a", "b", "verdict", "shared_prompts")
    assert pair == {**pair, "verdict": "too few prompts", "difference": "1.0000", "prompt_bootstrap_low": "",
                    "bootstrap_p": ""}

    alpha, beta = data["rating"]["checkpoints"]
    alpha["bootstrap_prompt"], beta["bootstrap_prompt"] = [0.8, 1.0], [0.0, 0.3]
    data["rating"]["pairs"][0].update(verdict="a better", bootstrap_prompt=[0.6, 1.0], bootstrap_p=5.3e-8)
    html = html_of(data)
    [pair] = table_rows(html, "Verdict per pair of checkpoints")
    assert (pair["Verdict"], pair["prompt bootstrap 95%"], pair["prompt bootstrap p"]) == (
        "alpha-ckpt better", "+0.600 to +1.000", "<0.0001")
    assert "Share judged aligned, 95% prompt-bootstrap intervals" in html  # plotted once every checkpoint has one
    beta.update(n=0, aligned=0, aligned_rate=None, wilson=[None, None], bootstrap_prompt=[None, None])
    row = table_rows(html_of(data), "Share of each checkpoint")[1]
    assert (row["rate"], row["Wilson 95%"], row["prompt bootstrap 95%"]) == ("n/a", "n/a", "n/a")
    data["rating"]["inputs"]["confidence"] = 0.9
    assert csv_block(csv_of(data), "study", "kind")[0]["confidence"] == "0.9"
    assert "Wilson 90%" in table_rows(html_of(data), "Share of each checkpoint")[0]


def test_gold_accuracy_has_its_heading_names_annotators_and_marks_the_excluded():
    data = pairwise_data()
    data["gold_accuracy"] = [
        {"annotator": "ann-a", "gold_answers": 4, "gold_correct": 4, "accuracy": 1.0, "excluded": False},
        {"annotator": "ann-b", "gold_answers": 4, "gold_correct": 1, "accuracy": 0.25, "excluded": True}]
    html = html_of(data)
    gold = section(html, "Gold accuracy")
    assert [list(r.values()) for r in table_rows(gold, "Answers on gold items")] == [
        ["ann-a", "4", "4", "1.000", "counted"],
        ["ann-b", "4", "1", "0.250", "excluded: flagged by the gold check"]]
    assert "#ann" not in html
    assert [list(r.values()) for r in csv_block(csv_of(data), "annotator", "gold_answers")] == [
        ["ann-a", "4", "4", "1.0000", "false"], ["ann-b", "4", "1", "0.2500", "true"]]


@pytest.mark.parametrize("kind", ["pairwise", "rating"])
def test_every_table_is_labelled_and_every_plot_says_what_it_shows(kind):
    data = pairwise_data(split_by_prompt) if kind == "pairwise" else likert_data()
    html = html_of(data)
    assert not re.search(r"(src|href)=|https?://|@import|url\(|<script", html)  # nothing is fetched or run
    found = tables(html)
    assert len(found) >= (7 if kind == "pairwise" else 6)
    for table in found:
        assert table["caption"], table
        assert table["head"] and all((tag, scope) == ("th", "col") for tag, scope, _ in table["head"]), table
        assert all(row[0][:2] == ("th", "row") for row in table["body"]), table
    labels = dict(re.findall(r'<svg role="img"[^>]*aria-label="([^"]*)"[^>]*>(.*?)</svg>', html, re.S))
    assert labels and all(label.strip() for label in labels)
    if kind == "pairwise":
        plots = {"Elo": data["pairwise"]["bradley_terry"]["ratings"], "win rate of A": None}
        for r in plots["Elo"]:
            assert any(f"{r['model']}: {r['elo']:.0f} (" in label for label in labels)
        reference_in = ["win rate of A"]
    else:
        plots = {"aligned rate": None}
        for r in data["rating"]["checkpoints"]:
            assert any(f"{r['model']}: {r['aligned_rate']:.2f} (" in label for label in labels)
        reference_in = ["aligned rate"]
    for axis in plots:
        assert any(f">{axis}</text>" in body for body in labels.values()), axis
    for axis in reference_in:
        body = next(body for body in labels.values() if f">{axis}</text>" in body)
        line = re.search(r'<line class="reference" x1="([\d.]+)"', body)
        tick = re.search(r'<text x="([\d.]+)"[^>]*text-anchor="middle" font-size="11">0\.50<', body)  # axis tick
        assert line and tick and float(line.group(1)) == pytest.approx(float(tick.group(1)))


def test_the_verdict_table_says_how_many_wins_a_had_per_win_of_b():
    data = pairwise_data()
    pair = data["pairwise"]["pairs"][0]
    edited = copy.deepcopy(data)
    edited["pairwise"]["pairs"][0].update(win_odds=2.0, win_odds_bootstrap_prompt=[1.25, 3.5])
    assert table_rows(html_of(edited), "Verdict per pair")[0]["A's wins per B win"] == "2.00 (1.25–3.50)"
    edited["pairwise"]["pairs"][0].update(win_odds=None, win_odds_bootstrap_prompt=[None, None])
    assert table_rows(html_of(edited), "Verdict per pair")[0]["A's wins per B win"] == "n/a"
    assert pair["win_odds"] is None or pair["win_odds"] == pytest.approx(pair["win_rate_a"] / (1 - pair["win_rate_a"]))
