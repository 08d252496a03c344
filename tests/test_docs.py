"""The documentation: README.md and docs/**/*.md. Fast: no torch, no processes.

(a) every relative markdown link resolves to an existing file (and a `#anchor` to a heading of a
markdown target); (b) the README stays short; (c) every docs/*.md page is linked from the README;
(d) no page points at material outside the repository (`../shared`, field notes). The README's main
command is the one exception to (d): it names the data and weights folders beside the checkout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_LINES = 220

PAGES = [README, *sorted(DOCS.rglob("*.md"))]
# [text](target) and ![alt](target); a target ends at whitespace or ")" (titles are not used here)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
# lines of the README's main command that may name folders beside the checkout
MAIN_COMMAND_EXEMPT = re.compile(r"^\s*GEN_DIST_(DATA|INCEPTION_WEIGHTS)=\.\./shared/\S+ \\$")


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks: links in code are not links."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def _strip_code_spans(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def _links(page: Path):
    for n, line in _prose_lines(page.read_text(encoding="utf-8")):
        for m in LINK.finditer(_strip_code_spans(line)):
            yield n, m.group(1)


def _is_relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("//")


def _slug(heading: str) -> str:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_\[\]]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(page.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            k = seen.get(slug, 0)
            seen[slug] = k + 1
            out.add(slug if k == 0 else f"{slug}-{k}")
    return out


def _rel(page: Path) -> str:
    return str(page.relative_to(REPO))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    broken = []
    for n, target in _links(page):
        if not _is_relative(target):
            continue
        path, _, anchor = target.partition("#")
        dest = page if not path else (page.parent / path).resolve()
        if not dest.exists():
            broken.append(f"{_rel(page)}:{n}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in _anchors(dest):
            broken.append(f"{_rel(page)}:{n}: {target} (no heading #{anchor} in {dest.name})")
        elif dest.exists() and REPO not in dest.parents and dest != REPO:
            broken.append(f"{_rel(page)}:{n}: {target} (outside the repository)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; at most {MAX_README_LINES}: move depth into docs/"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in _links(README) if _is_relative(t)}
    missing = [_rel(p) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {missing}"


FORBIDDEN = re.compile(r"\.\./shared|field notes|FIELD_NOTES", re.IGNORECASE)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_no_references_outside_the_repository(page):
    bad = []
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if page == README and MAIN_COMMAND_EXEMPT.match(line):
            continue
        if FORBIDDEN.search(line):
            bad.append(f"{_rel(page)}:{n}: {line.strip()}")
    assert not bad, "references to material outside the repository:\n" + "\n".join(bad)


def test_the_checks_see_links():
    """Guard against a regex that silently matches nothing."""
    assert sum(1 for _ in _links(README)) >= len(list(DOCS.glob("*.md")))
