"""The HTML audit report: one self-contained, escaped, size-bounded file rendered from the audit dict alone."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from biasaudit.errors import BiasAuditError, InputError
from biasaudit.report import figures, render_audit_html, write_audit_html
from biasaudit.report.render import templates_dir, verdict

FIXTURE = Path(__file__).parent / "fixtures" / "audit_example.json"
# The contract with the browser test and with anyone linking into a report.
SECTION_IDS = ["verdict", "summary", "conditions", "ratio-sweep", "reliance", "jsd", "embeddings",
               "gradient-conflict", "notes", "manifest"]
ATTACK = "<script>alert(1)</script>"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def example_audit() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


class ReportPage(HTMLParser):
    """What a reader of the page gets: the sections' text and images, and every tag and link."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.section_text: dict[str, list[str]] = {}
        self.section_images: dict[str, list[str]] = {}
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.flagged_rows = 0
        self._section: str | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = attributes.get("id")
            self.section_text[self._section] = []
            self.section_images[self._section] = []
        for name in ("src", "href"):
            if attributes.get(name) is not None:
                self.links.append(attributes[name])
        if tag == "img" and self._section:
            self.section_images[self._section].append(attributes.get("src") or "")
        if tag == "tr" and attributes.get("class") == "flagged":
            self.flagged_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._section:
            self.section_text[self._section].append(data)

    def text(self, section: str) -> str:
        return " ".join(" ".join(self.section_text[section]).split())


def test_report_is_one_offline_file_with_every_section_and_embedded_figures(tmp_path):
    """A reader would see a missing section, a broken image, or a page that phones home."""
    path = tmp_path / "audit.html"
    write_audit_html(example_audit(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["audit.html"]  # no temp file left, nothing beside it
    html = path.read_text(encoding="utf-8")
    page = ReportPage(html)
    assert list(page.section_text) == SECTION_IDS
    images = [src for srcs in page.section_images.values() for src in srcs]
    assert len(images) == 6  # conditions, sweep, reliance, jsd, embeddings, gradient conflict
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not any(link.lower().startswith(("http://", "https://", "//")) for link in page.links)
    assert not {"script", "link", "iframe"} & page.tags  # inline CSS only, no scripts to fetch
    assert "http://" not in html and "https://" not in html
    assert len(html.encode("utf-8")) < 2 * 2**20


def test_verdict_names_the_dominant_modality_its_flip_rates_and_the_gap():
    """A reader would get the wrong modality or an unreadable verdict line."""
    audit = example_audit()
    expected = ("text dominates: muting it changes 60% of predictions vs 5% for image; "
                "missing-modality Gap 22.2 points [16.0, 28.1].")
    assert verdict(audit) == expected
    assert expected in ReportPage(render_audit_html(audit)).text("verdict")


def test_tables_show_the_audit_numbers_with_intervals():
    """A reader would see numbers that are not the ones in audit.json."""
    page = ReportPage(render_audit_html(example_audit()))
    summary = page.text("summary")
    assert "Gap 22.2 [16.0, 28.1] 6.5 [2.1, 10.8]" in summary
    assert "flip rate, text impaired 60% 21%" in summary
    assert "52.8 [47.2, 58.3]" in summary  # A_text carries the interval of condition missing:text
    # 2 impaired conditions + 6 text-ratio points score above Full in the fixture.
    assert page.flagged_rows == 8
    assert "orange 5 30 12 0.177 0.190 no" in page.text("jsd")  # below min_wrong=15: not in the means
    assert "grey 8 31 0 n/a n/a no" in page.text("jsd")
    assert "62.5%" in page.text("gradient-conflict")
    assert "3f1d2a9c8b7e6d5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f" in page.text("manifest")


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
