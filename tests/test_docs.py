"""The README stays a ten-minute read, and the documentation holds together.

The README gives the install and demo commands, a short tour and a "Documentation" list; everything else lives in
guides under docs/. These tests read the Markdown as text (no network, no Markdown library): the README's length,
that every relative link and image in the README and the guides reaches an existing file and heading, that the
README's two commands are the ones CI runs, and that every guide is reachable from the README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
CI_RUN = REPO / ".ci" / "run"
MAX_README_LINES = 400

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) and ![alt](target); the text may hold inline code but no brackets. An optional "title" is dropped.
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the lines outside fenced code blocks, with inline code spans blanked out."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def _strip_code_spans(line: str) -> str:
    # Inline code may sit inside a link's text ([`x.py`](x.py)); keep the brackets, drop what the backticks hold.
    return re.sub(r"`[^`]*`", "code", line)


def github_slug(title: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation except - and _ dropped, spaces to -."""
    title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading keeps its text
    title = title.replace("`", "").lower()
    title = re.sub(r"[^\w\- ]", "", title)
    return title.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for the headings of a Markdown file (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group("title"))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image in a Markdown file that is not an absolute URL."""
    links = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(_strip_code_spans(line)):
            target = match.group("target").strip("<>")
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http:, https:, mailto:, ...
                continue
            links.append((number, target))
    return links


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """One line per relative link of `path` whose file is missing or whose #anchor names no heading there."""
    problems = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: ({target})"
        if not resolved.exists():
            problems.append(f"{where} points to {file_part}, which does not exist")
            continue
        if anchor:
            if resolved.suffix.lower() != ".md":
                problems.append(f"{where} has an anchor, but {file_part} is not a Markdown file")
            elif anchor not in anchors(resolved):
                problems.append(f"{where}: no heading of {file_part or path.name} has the anchor #{anchor}")
    return problems


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def bash_blocks(text: str) -> list[str]:
    """The contents of the ```bash blocks of a Markdown file, in order."""
    return [block.strip() for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)]


def ci_command_lines() -> list[str]:
    """The command lines of .ci/run, comments and blank lines left out, pip's -q dropped (CI only quietens pip)."""
    lines = []
    for line in CI_RUN.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            lines.append(" ".join(word for word in line.split() if word != "-q"))
    return lines


def test_readme_is_a_ten_minute_read():
    """The README grew back past 400 lines: a new user no longer finds install, demo and usage in ten minutes;
    move the detail into a guide under docs/ and link it."""
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= MAX_README_LINES, f"README.md has {count} lines; at most {MAX_README_LINES}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    """A reader clicking a link or looking at an image in the README or a guide would get GitHub's 404, or land at
    the top of a page instead of the section meant (a renamed heading, a moved file, a path not made ../ in docs/)."""
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_check_catches_a_broken_link(tmp_path):
    """The link check itself is blind: a missing file or heading would pass and a broken README would ship."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# A guide\n\n## Two splits\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text("# Top\n\n[ok](docs/guide.md#two-splits) [self](#top) ![img](docs/missing.png)\n"
                    "[gone](docs/nothing.md) [bad](docs/guide.md#three-splits)\n```bash\n[code](not/a/link.md)\n```\n",
                    encoding="utf-8")
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert any("missing.png" in p for p in problems) and any("nothing.md" in p for p in problems)
    assert any("#three-splits" in p for p in problems)


def test_github_slugs():
    """Anchors computed differently from GitHub's would flag good links or pass dead ones."""
    assert github_slug("audit.json (schema version 1)") == "auditjson-schema-version-1"
    assert github_slug("Checkpoints from DDP, torch.compile and Lightning") == "checkpoints-from-ddp-torchcompile-and-lightning"
    assert github_slug("2. `LoaderAdapter`: your `nn.Module` and your DataLoaders") == "2-loaderadapter-your-nnmodule-and-your-dataloaders"
    assert github_slug('What "missing image" means') == "what-missing-image-means"
    assert github_slug("Gating on bias (and on the modality gap)") == "gating-on-bias-and-on-the-modality-gap"


def test_readme_commands_are_the_ones_ci_runs():
    """The README's install/test or demo command drifted from what .ci/run executes, so a user copies a command
    that CI never tried (a different torch pin, extras, or test runner), and it may not work."""
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2, "the README must open with two bash blocks: the demo command, then the test command"
    demo, tests = blocks[0], blocks[1]
    assert "\n" not in demo and "\n" not in tests, "each of the README's first two commands must be one line"
    assert tests.endswith("&& pytest") and demo.endswith("&& biasaudit demo"), (demo, tests)

    ci_lines = ci_command_lines()
    ci_tests = [line for line in ci_lines if line.endswith("&& pytest")]
    assert len(ci_tests) == 1, f".ci/run should run one test command ending in '&& pytest': {ci_tests}"
    assert tests == ci_tests[0], f"README test command:\n  {tests}\n.ci/run runs:\n  {ci_tests[0]}"

    # CI runs the demo in the environment the test command built (extras included), so the README's demo command
    # must be the test command with the plain install and `biasaudit demo` in place of the extras and pytest.
    expected_demo = ci_tests[0].replace('pip install -e ".[test,hf,mlflow,wandb]"', "pip install -e .").replace("&& pytest", "&& biasaudit demo")
    assert demo == expected_demo, f"README demo command:\n  {demo}\nexpected from .ci/run:\n  {expected_demo}"
    assert any(line.startswith("biasaudit demo") for line in ci_lines), ".ci/run no longer runs `biasaudit demo`"


def test_every_guide_is_linked_from_the_readme():
    """A guide under docs/ that the README does not link is invisible: a user reading the README never finds it."""
    linked = set()
    for _, target in relative_links(README):
        file_part = target.partition("#")[0]
        if file_part:
            linked.add((README.parent / file_part).resolve())
    guides = sorted(DOCS.glob("*.md"))
    assert guides, "docs/ holds no guides"
    missing = [str(g.relative_to(REPO)) for g in guides if g.resolve() not in linked]
    assert not missing, f"guides not linked from README.md: {missing}"
