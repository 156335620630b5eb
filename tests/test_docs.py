"""README.md is a short user's guide and docs/ the reference: README stays within 300 lines and
quotes no measured figure (those live in docs/results.md), and every relative link in README.md
and docs/*.md points at a file (and, for a Markdown file, a heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runner.config import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a measured figure: a throughput, a duration or a load average, e.g. "23.2 images/s",
# "0.81 s", "12 ms", "load average 4.5"
FIGURE = re.compile(
    r"\b\d+(?:[.,]\d+)?\s*(?:fps|images/s|img/s|ms|s|sec|seconds|min|minutes)\b"
    r"|load(?: average)?\s*(?:of\s*|about\s*|~\s*)?\d", re.IGNORECASE)


def heading_slugs(markdown: str) -> set[str]:
    """GitHub's anchors for a file's headings: lower case, punctuation dropped, spaces to '-'."""
    slugs = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6}\s+(.*)", line)):
            text = re.sub(r"[`*]", "", match.group(1).strip().lower())
            slugs.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return slugs


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return [target for target in LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto:


def test_readme_is_at_most_300_lines() -> None:
    assert len(README.read_text().splitlines()) <= 300


def test_readme_quotes_no_measured_figure() -> None:
    found = [line for line in README.read_text().splitlines() if FIGURE.search(line)]
    assert not found, f"measured figures belong in docs/results.md: {found}"


def test_the_figure_pattern_finds_figures() -> None:
    for text in ("23.2 images/s", "took 0.81 s", "load average 4.5", "(load 1.8-2.0)",
                 "throughput_fps=54.98 fps", "12 ms per batch"):
        assert FIGURE.search(text), text
    assert not FIGURE.search("bs=1,4,8,16,32,64 top-1 56.527")


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        headed = not anchor or linked.suffix != ".md" or (
            linked.exists() and anchor in heading_slugs(linked.read_text()))
        if not (linked.exists() and headed):
            broken.append(target)
    assert not broken, f"{path.name}: broken links {broken}"


def test_readme_links_every_docs_file() -> None:
    linked = {Path(target.partition("#")[0]).name for target in relative_links(README)}
    assert {path.name for path in DOCS} <= linked
