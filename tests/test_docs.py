"""The README and docs/: short README, and every relative link (and its #anchor) resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(path: Path) -> str:
    """The file's text without fenced code blocks and code spans (links there are not links)."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return _CODE_SPAN.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _relative_links(path: Path) -> list[str]:
    links = _LINK.findall(_prose(path))
    return [t for t in links if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]


def test_readme_fits_on_a_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_the_docs_the_readme_points_to_exist():
    targets = {t.split("#")[0] for t in _relative_links(ROOT / "README.md")}
    for name in ("usage", "cli", "slides-and-batch", "models", "benchmarks", "results"):
        assert f"docs/{name}.md" in targets, f"README.md does not link docs/{name}.md"
    assert "CHANGELOG.md" in targets


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    broken = []
    for target in _relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"


def test_slug_follows_github():
    assert _slug("The plugin: a walkthrough") == "the-plugin-a-walkthrough"
    assert _slug("Results: semi-supervised fine-tuning") == "results-semi-supervised-fine-tuning"
    assert _slug("A — B") == "a--b"


def _section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(heading)
    rest = text[start + len(heading) :]
    end = re.search(r"^#{1,6}\s", rest, re.M)
    return rest[: end.start()] if end else rest


def test_the_guarantees_say_what_holds_when_a_project_is_shared():
    """Issue 27: the guarantees say what holds when two windows or processes share a
    project, and the README says it in a line that links there."""
    guarantees = " ".join(
        _section(ROOT / "docs" / "usage.md", "### What is guaranteed about your files").split()
    )
    assert "two windows or processes" in guarantees.lower()
    assert "autosave.md#what-holds-when-two-windows-or-processes-share-a-project" in guarantees
    paragraphs = (ROOT / "README.md").read_text(encoding="utf-8").split("\n\n")
    said = [
        " ".join(p.split())
        for p in paragraphs
        if "two windows or processes" in " ".join(p.split()).lower()
    ]
    assert said, "README.md does not say what holds when two windows or processes share a project"
    assert any("(docs/autosave.md#" in p or "(docs/usage.md#" in p for p in said), said
