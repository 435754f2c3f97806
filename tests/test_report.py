"""The HTML audit report: one self-contained, escaped, size-bounded file rendered from the audit dict alone."""

from __future__ import annotations

import base64
import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from biasaudit.errors import BiasAuditError, InputError
from biasaudit.report import figures, render_audit_html, write_audit_html
from biasaudit.report.render import templates_dir, verdict

FIXTURE = Path(__file__).parent / "fixtures" / "audit_example.json"
# The contract with the browser test and with anyone linking into a report.
SECTION_IDS = ["verdict", "bias-measures", "summary", "ceilings", "mute-checks", "groups", "conditions",
               "ratio-sweep", "reliance", "shapley", "interaction", "calibration", "jsd", "embeddings",
               "gradient-conflict", "notes", "manifest"]
# The sections of methods.md section 9, by JSON key and section id; audits written before them lack the keys.
DIAGNOSTIC_SECTIONS = {"groups": "groups", "carrier": "bias-measures", "ceilings": "ceilings", "calibration": "calibration",
                       "shapley": "shapley", "interaction": "interaction", "mute_checks": "mute-checks"}
ATTACK = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def example_audit() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def pre_diagnostics_audit() -> dict:
    """The fixture as a biasaudit from before the bias diagnostics wrote it: none of their keys."""
    audit = example_audit()
    for key in [*DIAGNOSTIC_SECTIONS, "verdict", "diagnostics"]:
        del audit[key]
    del audit["summary"]["carrier"], audit["manifest"]["forwards_per_sample"], audit["manifest"]["config"]["min_group"]
    return audit


@pytest.fixture(scope="module")
def example_page() -> "ReportPage":
    """The fixture's page, rendered once: every render draws nine figures."""
    return ReportPage(render_audit_html(example_audit()))


class ReportPage(HTMLParser):
    """What a reader of the page gets: the sections' text and images, and every tag and link."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.section_text: dict[str, list[str]] = {}
        self.section_images: dict[str, list[str]] = {}
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.flagged_rows = 0
        self.classes: dict[str, list[str]] = {}  # section id -> the class of every element in it
        self._section: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = attributes.get("id")
            self.section_text[self._section] = []
            self.section_images[self._section] = []
            self.classes[self._section] = []
        for name in ("src", "href"):
            if attributes.get(name) is not None:
                self.links.append(attributes[name])
        if tag == "img" and self._section:
            self.section_images[self._section].append(attributes.get("src") or "")
        if tag == "tr" and attributes.get("class") == "flagged":
            self.flagged_rows += 1
        if self._section and attributes.get("class"):
            self.classes[self._section].extend(attributes["class"].split())

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section:
            self.section_text[self._section].append(data)

    def text(self, section: str) -> str:
        return " ".join(" ".join(self.section_text[section]).split())

    def count(self, section: str, css_class: str) -> int:
        return self.classes[section].count(css_class)


def test_report_is_one_offline_file_with_every_section_and_embedded_figures(tmp_path):
    """A reader would see a missing section, a broken image, or a page that phones home."""
    path = tmp_path / "audit.html"
    write_audit_html(example_audit(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["audit.html"]  # no temp file left, nothing beside it
    html = path.read_text(encoding="utf-8")
    page = ReportPage(html)
    assert list(page.section_text) == SECTION_IDS
    images = [src for srcs in page.section_images.values() for src in srcs]
    # carrier, conditions, sweep, reliance, Shapley, calibration, jsd, embeddings, gradient conflict
    assert len(images) == 9
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not any(link.lower().startswith(("http://", "https://", "//")) for link in page.links)
    assert not {"script", "link", "iframe"} & page.tags  # inline CSS only, no scripts to fetch
    assert "http://" not in html and "https://" not in html
    assert len(html.encode("utf-8")) < 2 * 2**20


def test_verdict_of_an_older_audit_names_the_dominant_modality_its_flip_rates_and_the_gap():
    """A reader of an audit without a written verdict would get the wrong modality or an unreadable verdict line."""
    audit = pre_diagnostics_audit()
    expected = ("text dominates: muting it changes 60.0% of predictions vs 5.0% for image; "
                "missing-modality Gap 22.2 points [16.0, 28.1].")
    assert verdict(audit) == expected
    assert expected in ReportPage(render_audit_html(audit)).text("verdict")


def test_verdict_shows_the_scans_headline_and_sentences(example_page):
    """The scan's verdict leads with the bias measures; the page must not replace it with the Gap-only sentence."""
    audit = example_audit()
    text = example_page.text("verdict")
    for line in [audit["verdict"]["headline"], *audit["verdict"]["sentences"]]:
        assert " ".join(line.split()) in text
    assert verdict(audit) not in text


def test_tables_show_the_audit_numbers_with_intervals(example_page):
    """A reader would see numbers that are not the ones in audit.json."""
    page = example_page
    summary = page.text("summary")
    assert "Gap 22.2 [16.0, 28.1] 6.5 [2.1, 10.8]" in summary
    assert "flip rate, text impaired 60.0% 21.0%" in summary
    assert "52.8 [47.2, 58.3]" in summary  # A_text carries the interval of condition missing:text
    # 2 impaired conditions + 6 text-ratio points score above Full in the fixture.
    assert page.flagged_rows == 8
    assert "orange 5 30 12 0.177 0.190 no" in page.text("jsd")  # below min_wrong=15: not in the means
    assert "grey 8 31 0 n/a n/a no" in page.text("jsd")
    assert "62.5%" in page.text("gradient-conflict")
    assert "3f1d2a9c8b7e6d5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f" in page.text("manifest")


def test_bias_measures_name_the_carrier_its_swap_rates_and_the_worst_group(example_page):
    """The carrier test is what tells a shortcut from reliance; a reader would act on the wrong modality without it."""
    page = example_page
    text = page.text("bias-measures")
    assert "Bias carrier: text · dominant modality (most predictions change when it is muted): text" in text
    assert "text carrier 300 (24) 66.3% [60.3%, 72.0%] 71.3% vs 5.0% (5.0%) 20.3 [16.0, 25.0] 70.0% 0.0% (8.1% vs 8.1%)" in text
    assert "image 300 (24) 1.3% [-0.7%, 3.3%] 6.3% vs 5.0%" in text
    assert "full 0.0 [0.0, 0.0] 0 / brown 31.0 [25.7, 36.1] 59 22.6 97.3" in text
    assert "missing:text 0.0 [0.0, 0.0] 1 / cyan 52.4 [45.8, 59.2]" in text
    assert "11.4% of its samples are bias-aligned against 95.0% in training" in text
    assert "31.2% [26.2, 36.4], is the out-of-distribution accuracy" in text
    assert page.count("bias-measures", "differs") == 0  # carrier == dominant: no warning box
    assert len(page.section_images["bias-measures"]) == 1


def test_a_carrier_that_is_not_the_dominant_modality_gets_a_box_that_says_what_to_do():
    """The case of issue 9: muting the image flips the most, the shortcut is in the caption; debiasing the image would be wrong."""
    audit = example_audit()
    audit["carrier"].update(dominant="image", differs=True, bias_source="kmeans")
    page = ReportPage(render_audit_html(audit))
    assert page.count("bias-measures", "differs") == 1
    text = page.text("bias-measures")
    assert "The shortcut runs through text , while the model needs image most. Debias text" in text
    assert "--bias kmeans --bias-modality text" in text
    assert "Do not read image as the biased modality" in text


def test_no_carrier_is_said_in_words():
    audit = example_audit()
    audit["carrier"].update(carrier=None, differs=False)
    text = ReportPage(render_audit_html(audit)).text("bias-measures")
    assert "Bias carrier: none" in text and "No carrier is named" in text


def _shown_groups(audit: dict) -> list[dict]:
    """The rows the page should show: counted groups first, each part by Full accuracy, at most 60."""
    rows = sorted(audit["groups"]["groups"], key=lambda r: (not r["counted"], r["accuracy"]["full"]))
    return rows[:60]


def test_group_table_shows_the_worst_groups_first_marks_conflicting_ones_and_says_what_it_left_out(example_page):
    """A reader would miss the groups the shortcut fails, or take a 1-sample group for the worst one."""
    audit, page = example_audit(), example_page
    shown, total = _shown_groups(audit), len(audit["groups"]["groups"])
    assert total > 60  # the fixture exercises the cap
    assert page.count("groups", "conflicting") == sum(r["conflicting"] for r in shown)
    assert page.count("groups", "uncounted") == 2 * sum(not r["counted"] for r in shown)  # the row and its tag
    text = page.text("groups")
    first = shown[0]
    assert text.split("noisy:text", 1)[1].startswith(f" {first['label_name']} {first['bias_name']} {first['n']} conflicting 0.0")
    assert "0 orange 1 conflicting below min_group 0.0 0.0 100.0 100.0 0.0" in text
    left = total - 60
    assert f"{left} more groups are not shown (0 of them counted)" in text
    assert "Bias values come from the dataset's bias attribute. Groups are label x bias value; those with at least 3 samples are counted." in text


def test_ceilings_read_the_gap_against_what_each_modality_can_tell():
    audit = example_audit()
    text = ReportPage(render_audit_html(audit)).text("ceilings")
    assert "image 61.2 [55.9, 66.4] 52.8 [47.2, 58.3] 86.3% linear probe on the image branch output, fitted on train" in text
    assert "Gap implied by the ceilings: 30.2 points; observed missing-modality Gap: 22.2 points." in text
    assert "A large Gap is expected: the ceilings alone differ by 30.2 points" in text
    audit["ceilings"]["large_gap_expected"] = False
    assert "large Gap is expected:" not in ReportPage(render_audit_html(audit)).text("ceilings")


def test_calibration_table_and_reliability_diagrams():
    """ECE per condition, the confidence-rise rate, and one diagram figure for Full and the missing conditions."""
    audit = example_audit()
    audit["calibration"]["conditions"]["ratio:text:0.5"] = dict(audit["calibration"]["conditions"]["missing:text"])
    page = ReportPage(render_audit_html(audit))
    text = page.text("calibration")
    for name, row in audit["calibration"]["conditions"].items():
        if not name.startswith("ratio:"):
            rise = "—" if name == "full" else f"{100 * row['confidence_rise_rate']:.1f}%"
            assert f"{name} {row['ece']:.3f} {rise}" in text
    assert "ratio:text:0.5" not in text  # a sweep point repeats a missing condition
    assert len(page.section_images["calibration"]) == 1


def test_shapley_interaction_and_mute_checks_show_their_numbers(example_page):
    audit, page = example_audit(), example_page
    shapley = page.text("shapley")
    assert "image 0.218 [0.182, 0.253] text -0.005 [-0.065, 0.056]" in shapley
    assert "0 0.186 0.071" in shapley  # class 0's mean per modality
    assert "every modality 44 only image 127 only text 55 none 98" in shapley
    assert len(page.section_images["shapley"]) == 1
    assert "accuracy (%) 31.2 additive projection accuracy (%, R donors, uncorrected) 29.0 interaction share (points) 2.2 donors per sample 8" in page.text("interaction")
    mute = page.text("mute-checks")
    assert "missing:image far outside the data The muted image (zeros) lies far outside the data" in mute
    assert "image zero 30.6 5.0% text image mean 31.0 4.0% text" in mute
    audit["mute_checks"] = {"findings": [], "compare": None}
    mute = ReportPage(render_audit_html(audit)).text("mute-checks")
    assert "No muting condition is degenerate" in mute and "rerun the scan with --mute-compare" in mute


def test_what_the_scan_could_not_decide_is_shown_as_such():
    """A group whose bias value has no training prior is neither aligned nor conflicting; a caveat on the dominant
    modality (a degenerate mute) must reach the summary, and the coarser alignment grouping must be named."""
    audit = example_audit()
    audit["groups"]["groups"] = audit["groups"]["groups"][:1]
    audit["groups"]["groups"][0].update(conflicting=None)
    audit["groups"]["grouping"] = "label x bias-aligned/conflicting/neutral"
    audit["summary"]["missing"]["dominant_caveat"] = "Muting text sends 97% of the samples to class 4."
    page = ReportPage(render_audit_html(audit))
    assert "Groups are label x bias-aligned/conflicting/neutral;" in page.text("groups")
    assert "0 orange 1 unknown below min_group" in page.text("groups") and page.count("groups", "conflicting") == 0
    assert "Caveat on the dominant modality: Muting text sends 97% of the samples to class 4." in page.text("summary")


def test_every_diagnostic_section_explains_itself_once(example_page):
    """These plain-words lines are what a newcomer reads first (and what the README quotes)."""
    for section_id in DIAGNOSTIC_SECTIONS.values():
        assert example_page.count(section_id, "explain") == 1, section_id


def test_an_audit_written_before_the_bias_diagnostics_still_renders_every_section():
    """Old audit.json files must re-render: each new section says it is not available instead of crashing."""
    page = ReportPage(render_audit_html(pre_diagnostics_audit()))
    assert list(page.section_text) == SECTION_IDS
    for section_id in DIAGNOSTIC_SECTIONS.values():
        assert "Not available:" in page.text(section_id), section_id
        assert page.section_images[section_id] == []
    assert "This audit has no carrier-test section: an older biasaudit wrote it" in page.text("bias-measures")
    assert "This audit has no groups section" in page.text("bias-measures")
    assert "This audit has no calibration section" in page.text("calibration")
    assert "not run: add shapley to --conditions" in page.text("shapley")
    assert "not run: add interaction to --conditions" in page.text("interaction")
    assert sum(len(images) for images in page.section_images.values()) == 6


def test_a_diagnostic_left_out_of_the_conditions_says_how_to_ask_for_it():
    audit = example_audit()
    del audit["carrier"], audit["ceilings"], audit["shapley"]
    audit["diagnostics"] = ["groups", "calibration", "interaction"]
    page = ReportPage(render_audit_html(audit))
    assert "Not available: not run: add carrier to --conditions." in page.text("bias-measures")
    assert "Not available: not run: add ceilings to --conditions." in page.text("ceilings")
    assert "Not available: not run: add shapley to --conditions (e.g. --conditions default,shapley)." in page.text("shapley")


@pytest.mark.parametrize("key", list(DIAGNOSTIC_SECTIONS))
def test_an_unavailable_diagnostic_shows_its_note(key):
    audit = example_audit()
    note = f"The adapter has no branches() hook, so {key} could not run."
    audit[key] = {"available": False, "note": note}
    page = ReportPage(render_audit_html(audit))
    assert f"Not available: {note}" in page.text(DIAGNOSTIC_SECTIONS[key])
    assert page.section_images[DIAGNOSTIC_SECTIONS[key]] == []


def _without_mistakes(audit: dict) -> dict:
    jsd = audit["jsd"]
    for row in jsd["per_bias"].values():
        row.update(n_wrong=0, soft=None, argmax=None, q_soft=None, q_argmax=None)
    jsd.update(mean=None, weighted_mean=None, argmax_mean=None, argmax_weighted_mean=None)
    jsd["most_frequent"].update(soft=None, argmax=None)
    return audit


def test_a_split_without_mistakes_says_so_instead_of_an_empty_jsd_chart():
    """Issue 9: an empty chart and "No notes." left the reader guessing why JSD had no value."""
    audit = _without_mistakes(example_audit())
    audit["notes"] = []
    page = ReportPage(render_audit_html(audit))
    message = "The model makes no mistakes on this split, so there is nothing to measure."
    assert message in page.text("jsd")
    assert page.section_images["jsd"] == []
    assert message in page.text("notes") and "No notes." not in page.text("notes")
    audit["notes"] = ["JSD: no mistakes on the test split, so JSD has nothing to measure."]  # the scan's own note
    notes = ReportPage(render_audit_html(audit)).text("notes")
    assert notes.count("no mistakes") == 1 and message not in notes


def test_user_strings_are_escaped_in_text_and_safe_in_figures():
    """A class or bias name from the user's data could run script in the reader's browser or crash matplotlib."""
    audit = example_audit()
    audit["dataset"]["class_names"][0] = ATTACK
    audit["reliance"]["classes"][0] = ATTACK
    per_bias = audit["jsd"]["per_bias"]
    audit["jsd"]["per_bias"] = {(ATTACK if k == "red" else r"$\notacommand$" if k == "blue" else k): v
                                for k, v in per_bias.items()}
    audit["notes"].append(ATTACK)
    audit["manifest"]["checkpoint"]["path"] = ATTACK
    html = render_audit_html(audit)
    assert ATTACK not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5
    page = ReportPage(html)
    assert "script" not in page.tags
    assert ATTACK in page.text("jsd") and ATTACK in page.text("notes")


def test_hostile_names_in_the_diagnostic_tables_are_escaped_and_safe_in_figures():
    """Modality, class and bias names come from the user's adapter and data; so do the scan's messages."""
    audit = example_audit()
    for key in ("carrier", "ceilings", "shapley"):
        modalities = audit[key]["modalities"]
        modalities[ATTACK] = modalities.pop("text")
        modalities[r"$\notacommand$"] = modalities.pop("image")
    audit["carrier"].update(carrier=ATTACK, dominant=r"$\notacommand$", differs=True)
    audit["shapley"]["contingency"] = {f"only:{ATTACK}": 3, "both": 1}
    row = audit["groups"]["groups"][0]
    row.update(label_name=ATTACK, bias_name=ATTACK)
    audit["groups"]["conditions"]["full"]["worst_group_label"] = ATTACK
    audit["mute_checks"]["findings"][0]["message"] = ATTACK
    audit["mute_checks"]["compare"] = {ATTACK: {"choices": {ATTACK: {"accuracy": 1.0, "flip_rate": 0.5}}, "dominant": {ATTACK: ATTACK}}}
    audit["verdict"] = {"headline": ATTACK, "sentences": [ATTACK]}
    html = render_audit_html(audit)
    assert ATTACK not in html
    page = ReportPage(html)
    assert "script" not in page.tags
    for section_id in ("verdict", "bias-measures", "groups", "ceilings", "shapley", "mute-checks"):
        assert ATTACK in page.text(section_id), section_id
    assert len(page.section_images["bias-measures"]) == 1 and len(page.section_images["shapley"]) == 1


@pytest.mark.parametrize("key,section_id", [("jsd", "jsd"), ("embeddings", "embeddings"),
                                            ("gradient_conflict", "gradient-conflict")])
def test_unavailable_analysis_shows_its_note_instead_of_crashing(key, section_id):
    """An audit without an adapter's optional part would crash the report or silently hide the section."""
    audit = example_audit()
    note = f"The adapter names no fused feature, so {key} could not run."
    audit[key] = {"available": False, "note": note}
    page = ReportPage(render_audit_html(audit))
    assert list(page.section_text) == SECTION_IDS
    assert note in page.text(section_id)
    assert page.section_images[section_id] == []


def test_absent_analysis_key_and_null_numbers_still_render():
    """An older or partial audit (NaN written as null, a section left out) would crash the report."""
    audit = example_audit()
    del audit["gradient_conflict"]
    audit["conditions"][1]["accuracy"] = None
    audit["conditions"][1]["accuracy_ci"] = [None, None]
    audit["reliance"]["drop"]["image"][0] = None
    audit["summary"]["noisy"] = None
    audit["ratio_sweep"] = {}
    del audit["manifest"]["adapter"]
    page = ReportPage(render_audit_html(audit))
    assert "no gradient-conflict section" in page.text("gradient-conflict")
    assert "missing:image missing image zero 1.0 324 n/a" in page.text("conditions")
    assert "no missing-ratio sweep" in page.text("ratio-sweep")
    assert "Gap 22.2 [16.0, 28.1] n/a" in page.text("summary")


def test_input_that_is_not_a_version_1_audit_is_refused():
    """Rendering a gate file or a future schema would produce a misleading report instead of a clear error."""
    with pytest.raises(InputError, match="not a biasaudit audit"):
        render_audit_html({"schema": "biasaudit.gate"})
    audit = example_audit()
    audit["schema_version"] = 2
    with pytest.raises(InputError, match="schema_version 2"):
        render_audit_html(audit)
    del audit["conditions"]
    audit["schema_version"] = 1
    with pytest.raises(InputError, match="conditions"):
        render_audit_html(audit)


def test_oversized_report_raises_and_leaves_the_previous_file_intact(tmp_path):
    """A runaway report would be written half-way or replace a good one with something unopenable."""
    path = tmp_path / "audit.html"
    path.write_text("previous report", encoding="utf-8")
    with pytest.raises(BiasAuditError, match="limit"):
        write_audit_html(example_audit(), path, max_bytes=50_000)
    assert path.read_text(encoding="utf-8") == "previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["audit.html"]


def test_many_embedding_points_keep_the_report_small():
    """A 5,000-point scan (the default cap) would make a report too big to mail or attach to CI."""
    audit = example_audit()
    points = [[(i % 97) / 9.0, (i % 89) / 7.0] for i in range(5000)]
    audit["embeddings"].update(euclidean=points, cosine=points[::-1], labels=[i % 10 for i in range(5000)], n_points=5000)
    assert len(render_audit_html(audit).encode("utf-8")) < 2 * 2**20


def test_many_groups_and_classes_keep_the_report_small():
    """1,000 classes x 20 bias values would otherwise put 20,000 rows on the page."""
    audit = example_audit()
    template = audit["groups"]["groups"][0]
    audit["groups"]["groups"] = [{**template, "label": i, "label_name": str(i), "bias": i % 20, "n": 12, "counted": True}
                                 for i in range(20_000)]
    audit["dataset"]["class_names"] = [f"class {i}" for i in range(1000)]
    for row in audit["shapley"]["modalities"].values():
        row["per_class"] = [0.1] * 1000
    html = render_audit_html(audit)
    assert len(html.encode("utf-8")) < 2 * 2**20
    page = ReportPage(html)
    assert "19940 more groups are not shown (19940 of them counted)" in page.text("groups")
    assert "940 more classes are not shown" in page.text("shapley")


def test_figures_are_pure_deterministic_and_leave_no_pyplot_state():
    """Figures leaking into pyplot would pile up across reports; nondeterministic PNGs break byte-identical reruns."""
    import matplotlib.pyplot as plt

    audit = example_audit()
    made = [
        figures.condition_bars(["full", "missing:text"], [31.2, None], [[26.2, 36.4], None], full_accuracy=31.2),
        figures.ratio_sweep(audit["ratio_sweep"], full_accuracy=31.2),
        figures.reliance_heatmap(audit["reliance"]["classes"], {"image": [None] * 10, "text": audit["reliance"]["drop"]["text"]}),
        figures.jsd_bars(["red", "grey"], [0.15, None], [0.08, None], weighted_mean=0.2),
        figures.embedding_scatter([[0, 0], [1, 1]], [[0, 1], [1, 0]], [0, 3], class_names=["a", "b", "c", "d"]),
        figures.conflict_histogram(audit["gradient_conflict"]["pairs"]),
        figures.conflict_histogram([{"a": "image", "b": "text", "cosines": [-0.5, 0.2, None]}]),
        figures.carrier_bars(["image", "text"], [0.013, None], [[-0.007, 0.033], None], carrier="image"),
        figures.reliability_diagrams({n: c["reliability"] for n, c in audit["calibration"]["conditions"].items()},
                                     ece={"full": 0.04}),
        figures.shapley_bars({"a": {"-0.5": 2, "0.0": 5}, "b": {"0.3333": 1, "1.0": 4}, "c": {}}),
    ]
    assert all(isinstance(fig, Figure) for fig in made)
    uris = [figures.figure_to_data_uri(fig) for fig in made]
    assert plt.get_fignums() == []
    assert figures.figure_to_data_uri(made[3]) == uris[3]
    assert all(base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC) for uri in uris)


def test_template_is_found_in_the_source_tree_for_an_editable_install():
    """Running from a checkout would fail with 'template not found'."""
    assert (templates_dir() / "audit.html.j2").is_file()


def test_rendering_does_not_modify_the_audit():
    """Rendering then writing audit.json would save a different audit than the scan produced."""
    audit = example_audit()
    before = copy.deepcopy(audit)
    render_audit_html(audit)
    assert audit == before


def test_bounds_and_changes_near_zero_keep_their_sign_on_the_page_and_in_the_terminal():
    """Issue 23 (6b): an interval bound of -0.03 printed as "-0.0": a minus zero reads as a typo and hides which side of
    zero the interval starts. The HTML page and the terminal table print it with the decimals it needs."""
    from rich.console import Console

    from biasaudit.cli.console import summary_table

    audit = example_audit()
    swap = audit["carrier"]["modalities"]["image"]["bias_swap"]
    swap.update(excess_follow_rate=-0.0004, excess_follow_rate_ci=[-0.0003, 0.033])
    audit["interaction"]["interaction_share_ci"] = [-0.03, 4.4]
    page = ReportPage(render_audit_html(audit))
    assert "image 300 (24) -0.04% [-0.03%, 3.3%]" in page.text("bias-measures")
    assert "interaction share (points) 2.2 [-0.03, 4.4]" in page.text("interaction")
    terminal = Console(record=True, width=200)
    terminal.print(summary_table(audit))
    row = next(line for line in terminal.export_text().splitlines() if "bias swap: image" in line)
    assert [cell.strip() for cell in row.split("│")][1:4] == ["bias swap: image", "-0.04", "[-0.03, 3.3]"]
    for text in (page.text("bias-measures"), page.text("interaction"), terminal.export_text()):
        assert not re.search(r"-0\.0+(?![0-9])", text)


def test_the_jsd_legend_covers_no_bar():
    """Issue 23 (6b): the legend sat in the upper right corner of the axes, on top of the last bias values' bars."""
    names = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "grey", "black"]
    fig = figures.jsd_bars(names, [0.3] * 8 + [0.95, 0.9], [0.2] * 8 + [0.9, 0.97], weighted_mean=0.4)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the figure out
    renderer = canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    assert len(legends) == 1
    box = legends[0].get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for ax in fig.axes for patch in ax.patches]
    assert len(bars) == 20 and not any(box.overlaps(bar) for bar in bars)
