"""leaderboard.json's published schema and the leaderboard's page (issue 22): a realistic document (the control ce and two
methods, three seeds each, one recommended) fits the schema and a damaged one does not; the page is one offline file
that shows the verdict, every method, a link to every seed's compare page and an embedded Pareto plot (whose labels
never overlap), with every string from the data escaped."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser
from importlib import resources

import jsonschema
import pytest

from biasaudit.errors import InputError
from biasaudit.report.leaderboard_figures import pareto_plot
from biasaudit.report.leaderboard_render import (SECTION_IDS, compare_link, primary_measure, render_leaderboard_html,
                                                 write_leaderboard_html)

ATTACK = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1, 2)
MEASURES = [("full", "Full accuracy", "higher", "accuracy"), ("worst_group", "worst-group accuracy", "higher", "bias"),
            ("bias_balanced", "bias-balanced accuracy", "higher", "bias"), ("ood", "OOD accuracy", "higher", "bias"),
            ("follow_rate", "bias-follow rate", "lower", "bias"), ("gap", "missing-modality Gap", None, "reliance")]
# Per method and measure: the three seeds' values after training (points). ce is the control.
VALUES = {"ce": {"full": [31.2, 29.8, 33.0], "worst_group": [4.1, 2.9, 5.5], "bias_balanced": [30.4, 28.9, 32.1],
                 "ood": [31.2, 29.8, 33.0], "follow_rate": [58.3, 61.0, 55.9], "gap": [49.8, 52.1, 47.6]},
          "mmdb": {"full": [36.9, 35.1, 38.2], "worst_group": [14.8, 12.0, 16.3], "bias_balanced": [36.0, 34.6, 37.7],
                   "ood": [36.9, 35.1, 38.2], "follow_rate": [21.5, 25.3, 18.8], "gap": [30.2, 33.9, 28.4]},
          "balgrad": {"full": [28.0, 33.5, 27.1], "worst_group": [6.0, 1.8, 9.9], "bias_balanced": [27.5, 32.8, 26.3],
                      "ood": [28.0, 33.5, 27.1], "follow_rate": [50.1, 63.4, 47.7], "gap": [41.0, 50.5, 39.2]}}
SIGNIFICANT = {"mmdb"}


def mean_std(values: list[float]) -> dict[str, float]:
    mean = sum(values) / len(values)
    return {"mean": round(mean, 2), "std": round((sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5, 2)}


def change(method: str, measure: str) -> dict:
    deltas = [round(m - c, 2) for m, c in zip(VALUES[method][measure], VALUES["ce"][measure])]
    summary = mean_std(deltas)
    half = 2.5 * summary["std"] + (1.0 if method in SIGNIFICANT else 6.0)
    interval = [round(summary["mean"] - half, 2), round(summary["mean"] + half, 2)]
    return {"delta": summary["mean"], "interval": interval, "seed_deltas": deltas, "seed_spread": summary["std"],
            "significant": interval[0] > 0 or interval[1] < 0, "why_no_interval": None}


def method_entry(method: str) -> dict:
    control = method == "ce"
    seeds = [{"seed": s, "run_id": f"{method}{s}".ljust(32, "0"), "folder": f"runs/{method}/seed-{s}",
              "values": {name: VALUES[method][name][i] for name, *_ in MEASURES},
              "epoch_loss": [round(1.9 / (1 + 0.4 * e) + 0.05 * s + (0.2 if method == "mmdb" else 0.0), 4) for e in range(5)],
              "wall_time_s": 12.5 + s} for i, s in enumerate(SEEDS)]
    recommended = method == "mmdb"
    return {"method": method, "control": control, "seeds": seeds,
            "values": {name: mean_std(VALUES[method][name]) for name, *_ in MEASURES},
            "changes": None if control else {name: change(method, name) for name, *_ in MEASURES},
            "options": {"option": "scale", "grid": [1.0, 4.0, 32.0], "validated_on": "val", "criterion": "bias-balanced accuracy",
                        "chosen": {str(s): 4.0 * (1 + i) for i, s in enumerate(SEEDS)}, "undecided_seeds": [SEEDS[0]]} if method == "mmdb" else None,
            "sentence": "the control: plain fine-tuning with the same loop, epochs, optimizer and seeds." if control else
            (f"{method} lowered the text bias-follow rate {change(method, 'follow_rate')['delta']:+.1f} points and raised "
             f"worst-group accuracy {change(method, 'worst_group')['delta']:+.1f} points; Full accuracy did not drop."
             if recommended else f"{method} moved no bias measure beyond the spread of its seeds."),
            "recommended": recommended, "kept_checkpoint": f"runs/{method}/seed-2/model.pt" if not control else None}


def leaderboard_document() -> dict:
    methods = ["ce", "mmdb", "balgrad"]
    return {
        "schema": "biasaudit.leaderboard", "schema_version": 1,
        "run": {"id": "0123456789abcdef0123456789abcdef", "files": ["leaderboard.json", "leaderboard.html"], "sha256": {}},
        "manifest": {"biasaudit": "0.4.0", "checkpoint": {"path": "demo/model.pt", "sha256": "ab" * 32},
                     "adapter": "biasaudit.datasets.digits:DigitsAdapter", "device": "cpu",
                     "settings": {"methods": methods, "seeds": list(SEEDS), "split": "ood", "epochs": 5, "lr": 0.003,
                                  "batch_size": 64, "optimizer": "adam", "bootstrap": 200, "conditions": "missing,carrier",
                                  "primary": "worst-group", "max_full_drop": 1.0, "keep": "best"},
                     "selection": "mmdb's scale was chosen on val from 0.5, 1, 2, 4; balgrad has no options to select.",
                     "wall_time_s": 131.7},
        "split": "ood", "ood": True, "carrier": "text", "control": "ce",
        "measures": [{"name": n, "label": label, "better": better, "kind": kind} for n, label, better, kind in MEASURES],
        "methods": [method_entry(m) for m in methods],
        "recommendation": {"method": "mmdb", "primary": "worst-group", "max_full_drop": 1.0,
                           "verdict": "Use mmdb: it raised worst-group accuracy by +10.2 points over the control without losing Full accuracy.",
                           "reasons": ["mmdb: worst-group accuracy +10.2 [5.9, 14.5], Full accuracy +5.4 [2.0, 8.8].",
                                       "balgrad: no bias measure moved with an interval excluding zero."]},
        "verdict": "mmdb made the model less biased than plain fine-tuning on every seed; balgrad did not help.",
    }


def schema() -> dict:
    return json.loads(resources.files("biasaudit").joinpath("schemas", "leaderboard.schema.json").read_text(encoding="utf-8"))


def errors(document) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in jsonschema.Draft202012Validator(schema()).iter_errors(document)]


class Page(HTMLParser):
    """What a reader of the page gets: each section's text, its images, and every tag and link."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, list[str]] = {}
        self.images: dict[str, list[str]] = {}
        self.links: list[str] = []
        self.tags: set[str] = set()
        self._section: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = attributes.get("id")
            self.text[self._section], self.images[self._section] = [], []
        if tag == "a" and attributes.get("href") is not None:
            self.links.append(attributes["href"])
        if tag == "img" and self._section:
            self.images[self._section].append(attributes.get("src") or "")

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._section:
            self.text[self._section].append(data)

    def section(self, name: str) -> str:
        return " ".join(" ".join(self.text[name]).split())


@pytest.fixture(scope="module")
def page_html() -> str:
    return render_leaderboard_html(leaderboard_document())


# --- schema ----------------------------------------------------------------------------------------------------------------

def test_the_schema_is_a_valid_draft_2020_12_schema_with_every_field_described():
    document = schema()
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema" and document["$id"] and document["title"]
    defs = {f"#/$defs/{name}": spec for name, spec in document["$defs"].items()}
    undescribed = [key for key, spec in document["properties"].items()
                   if "description" not in spec and "description" not in defs.get(spec.get("$ref"), {}) and key not in ("schema", "schema_version")]
    assert not undescribed, undescribed


def test_a_realistic_leaderboard_fits_the_schema():
    assert errors(leaderboard_document()) == []


def damaged(path: tuple, how: str) -> dict:
    document = leaderboard_document()
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = {"str": "forty", "list": ["a"]}[how]
    return document


@pytest.mark.parametrize("path, how", [
    (("verdict",), "delete"), (("recommendation", "reasons"), "delete"), (("manifest", "settings", "primary"), "delete"),
    (("methods", 1, "changes", "full", "interval"), "delete"), (("methods", 0, "seeds", 2, "folder"), "delete"),
    (("methods", 1, "values", "full", "mean"), "str"), (("methods", 2, "seeds", 0, "epoch_loss"), "str"),
    (("methods", 1, "recommended"), "str"), (("manifest", "wall_time_s"), "list"), (("ood",), "str"),
    (("methods", 1, "changes", "ood", "interval"), "list"), (("measures", 0, "name"), "str"),
])
def test_a_damaged_leaderboard_is_refused(path, how):
    assert errors(damaged(path, how)), f"{how} {path} passed the schema"


def test_the_schema_refuses_an_unknown_measure_and_a_wrong_control():
    document = leaderboard_document()
    document["methods"][1]["values"]["accuracy"] = {"mean": 1.0, "std": 0.0}
    assert any("accuracy" in e for e in errors(document))
    document = leaderboard_document()
    document["control"] = "mmdb"
    assert errors(document)


# --- page ------------------------------------------------------------------------------------------------------------------

def test_the_page_is_one_offline_file_in_section_order(tmp_path):
    path = tmp_path / "leaderboard.html"
    write_leaderboard_html(leaderboard_document(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.html"]  # no temp file left
    html = path.read_text(encoding="utf-8")
    page = Page(html)
    assert list(page.text) == list(SECTION_IDS)
    assert "http" not in html.lower()
    assert not {"script", "link", "iframe"} & page.tags
    assert '<meta name="biasaudit-run" content="0123456789abcdef0123456789abcdef">' in html  # the output set's stamp
    assert len(html.encode("utf-8")) < 2 * 2**20


def test_the_page_leads_with_the_verdict_and_the_reasons(page_html):
    document = leaderboard_document()
    page = Page(page_html)
    text = page.section("verdict")
    for line in [document["verdict"], document["recommendation"]["verdict"], *document["recommendation"]["reasons"]]:
        assert line in text
    assert page_html.index(document["verdict"]) < page_html.index('id="table"')


def test_the_table_shows_every_method_its_numbers_and_marks_control_and_recommendation(page_html):
    text = Page(page_html).section("table")
    for method in ("ce", "mmdb", "balgrad"):
        assert method in text
    document = leaderboard_document()
    mmdb = document["methods"][1]
    worst = mmdb["changes"]["worst_group"]
    assert f"{mmdb['values']['worst_group']['mean']:.1f} ± {mmdb['values']['worst_group']['std']:.1f}" in text
    assert f"{worst['delta']:+.1f} [{worst['interval'][0]:.1f}, {worst['interval'][1]:.1f}]" in text
    assert "control" in text and "recommended" in text
    assert page_html.count('<tr class="recommended">') == 1 and page_html.count('<tr class="control">') == 1
    # mmdb's changes all exclude zero; its follow rate fell (better, lower is better), balgrad's moved nothing.
    assert page_html.count('class="significant better"') == 5 and "significant worse" not in page_html
    assert mmdb["sentence"] in text
    # The option each seed chose on val, and the seeds on which val could not tell the values apart.
    chosen = ", ".join(f"{v:g}" for v in mmdb["options"]["chosen"].values())
    assert f"scale chosen on val: {chosen} (seeds {', '.join(map(str, SEEDS))}); on seed {SEEDS[0]} every value scored the same" in text


def test_the_page_links_every_seeds_compare_page(page_html):
    links = Page(page_html).links
    for method in ("ce", "mmdb", "balgrad"):
        for seed in SEEDS:
            assert f"runs/{method}/seed-{seed}/compare.html" in links


def test_the_page_embeds_the_pareto_plot_and_the_training_curves(page_html):
    page = Page(page_html)
    for section in ("pareto", "training"):
        assert len(page.images[section]) == 1
        src = page.images[section][0]
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert "worst-group accuracy" in page.section("pareto")
    assert "0.5, 1, 2, 4" in page.section("settings") and "2 min 12 s" in page.section("settings")


def test_the_pareto_plots_labels_never_overlap_when_methods_crowd_the_control():
    """Methods that change little all land near the control at (0, 0); their names must stay readable, not print on
    top of each other and of the control's."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    names = ["mmdb", "balgrad", "groupdro", "jtt", "lff", "rubi"]
    full = [0.1, -0.15, 0.05, 0.2, -0.05, 0.0]
    bias = [0.05, 0.1, -0.2, -0.1, 0.15, 0.2]
    fig = pareto_plot(names, full, [[x - 4.0, x + 4.0] for x in full], bias, [[y - 3.0, y + 3.0] for y in bias],
                      control="ce", margin=1.0, bias_label="worst-group accuracy", bias_better="higher", recommended="mmdb")
    canvas = FigureCanvasAgg(fig)  # the backend the page's PNG is drawn with
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    labels = {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}  # the text alone, not a leader line
    assert set(labels) == {"ce", *names}
    boxes = list(labels.items())
    overlapping = [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1:] if box.overlaps(other)]
    assert overlapping == []
    inside = ax.get_window_extent(renderer)
    assert all(inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
               for box in labels.values())


def test_a_hostile_method_name_and_sentence_are_escaped():
    document = leaderboard_document()
    entry = document["methods"][2]
    entry["method"] = entry["sentence"] = ATTACK
    entry["seeds"][0]["folder"] = "javascript:alert(1)//"
    entry["seeds"][1]["folder"] = "//evil.example/x"
    document["recommendation"]["reasons"].append(ATTACK)
    html = render_leaderboard_html(document)
    assert ATTACK not in html and "&lt;script&gt;" in html
    page = Page(html)
    assert "script" not in page.tags
    assert not any(link.startswith(("javascript:", "//", "/")) or ":" in link for link in page.links)
    assert compare_link("runs/mmdb/seed-0") == "runs/mmdb/seed-0/compare.html"


def test_the_primary_measure_falls_back_to_the_first_bias_measure_the_document_has():
    document = leaderboard_document()
    assert primary_measure(document) == "worst_group"
    document["manifest"]["settings"]["primary"] = "ood"
    assert primary_measure(document) == "ood"
    document["measures"] = [m for m in document["measures"] if m["name"] not in ("ood", "worst_group")]
    assert primary_measure(document) == "bias_balanced"


def test_a_page_without_a_bias_measure_or_losses_says_so():
    document = leaderboard_document()
    document["measures"] = [m for m in document["measures"] if m["kind"] != "bias"]
    for entry in document["methods"]:
        for run in entry["seeds"]:
            run["epoch_loss"] = []
    page = Page(render_leaderboard_html(document))
    assert page.images["pareto"] == [] and page.images["training"] == []
    assert "Not available" in page.section("pareto") and "Not available" in page.section("training")


def test_a_method_without_a_change_is_listed_as_not_plotted():
    document = leaderboard_document()
    document["methods"][2]["changes"]["worst_group"].update(delta=None, interval=None, significant=False,
                                                            why_no_interval="no seed had a bias-conflicting sample")
    assert errors(document) == []
    page = Page(render_leaderboard_html(document))
    assert "Not plotted (a change could not be computed): balgrad." in page.section("pareto")
    assert "no interval: no seed had a bias-conflicting sample" in page.section("table")


def test_something_else_is_refused_in_one_sentence():
    with pytest.raises(InputError, match="not a biasaudit leaderboard"):
        render_leaderboard_html({"schema": "biasaudit.compare"})
    document = copy.deepcopy(leaderboard_document())
    document["schema_version"] = 2
    with pytest.raises(InputError, match="schema_version 2"):
        render_leaderboard_html(document)


def test_rendering_leaves_no_figure_in_pyplots_state(page_html):
    """The figures are plain Figures: a long-lived process rendering many pages would otherwise keep each one alive."""
    from matplotlib import pyplot

    render_leaderboard_html(leaderboard_document())
    assert pyplot.get_fignums() == []


def test_a_leaderboard_results_methods_are_typed_with_the_documents_figures(tmp_path):
    """`result.methods["mmdb"].changes["worst_group"]` is the pooled change with its interval, not a nested dict."""
    from biasaudit.results.leaderboard_result import LeaderboardResult

    document = leaderboard_document()
    result = LeaderboardResult(recommended="mmdb", verdict=document["verdict"], reasons=(), json_path=tmp_path / "l.json",
                               html_path=tmp_path / "l.html", document=document)
    assert list(result.methods) == [m["method"] for m in document["methods"]]
    mmdb, control = result.methods["mmdb"], result.methods["ce"]
    entry = document["methods"][1]
    assert mmdb.recommended and not mmdb.control and control.control and control.changes == {}
    change = mmdb.changes["worst_group"]
    assert (change.value, change.interval) == (entry["changes"]["worst_group"]["delta"], tuple(entry["changes"]["worst_group"]["interval"]))
    assert change.excludes_zero and mmdb.seed_deltas["worst_group"] == tuple(entry["changes"]["worst_group"]["seed_deltas"])
    assert mmdb.values["full"].mean == entry["values"]["full"]["mean"] and mmdb.options["option"] == "scale"
