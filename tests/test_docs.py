"""The docs point at what exists: every relative link in README.md and docs/**/*.md (and the
two READMEs beside the code, deploy/ and handlers/) leads to a file, and to a heading where it
names one; every repository path named in backticks (`service/web/webhooks.py`, `deploy/SCALING.md`)
exists. URLs, code blocks and runtime paths (.data/, /app/...) are not the repository's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import ROOT

PAGES = sorted(
    [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "handlers" / "README.md"]
    + [p for p in (ROOT / "docs").rglob("*.md")]
)

# What a path in backticks must start with to be taken as the repository's.
REPO_ROOTS = ("service/", "workers/", "sandbox/", "bench/", "tests/", "deploy/", "docs/", "handlers/", ".ci/")
REPO_FILES = {"README.md", "Procfile", "Makefile", "pyproject.toml"}
# Named as examples of what an integrator writes, not files of ours.
EXAMPLES = {"handlers/myhandlers.py", "handlers/myapp/__init__.py"}

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^\s*```.*?^\s*```", re.DOTALL | re.MULTILINE)


def prose(page: Path) -> str:
    """The page without its fenced code blocks (examples, logs, trees)."""
    return FENCE.sub("", page.read_text())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in prose(page).splitlines() if re.match(r"#{1,6} ", line)}


def rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT.resolve()).as_posix()
    except ValueError:  # outside the checkout
        return str(path)


def broken_links(page: Path) -> list[str]:
    broken = []
    for match in LINK.finditer(prose(page)):
        href = match.group(1) or match.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", href):  # https:, mailto:
            continue
        target, _, anchor = href.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{href}: no {rel(path)}")
            continue
        if anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{href}: no heading #{anchor} in {rel(path)}")
    return broken


def repo_path(text: str) -> str | None:
    """The repository path a backticked text names, or None if it names none."""
    text = text.split("::", 1)[0].split(" ", 1)[0]  # tests/test_x.py::test_y, `python -m x --y`
    if text in REPO_FILES:
        return text
    if not text.startswith(REPO_ROOTS) or any(c in text for c in "{}*$<>|"):
        return None
    return text


def missing_paths(page: Path) -> list[str]:
    missing = []
    for match in CODE.finditer(prose(page)):
        path = repo_path(match.group(1))
        if path is None or path in EXAMPLES:
            continue
        if not (ROOT / path).exists():
            missing.append(path)
    return missing


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_repository_path_named_exists(page: Path) -> None:
    assert missing_paths(page) == []


def test_the_checks_see_a_broken_link_and_a_missing_path(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n[ok](#a-page) [gone](nowhere.md) [no heading](#nowhere) [web](https://codat.io)\n"
        "`service/web/webhooks.py` `service/web/gone.py` `.data/dev.env` `codat:lifecycle`\n"
        "```\n[in code](ignored.md) `service/ignored.py`\n```\n"
    )
    assert [b.split(":")[0] for b in broken_links(page)] == ["nowhere.md", "#nowhere"]
    assert missing_paths(page) == ["service/web/gone.py"]


def test_the_console_screenshots_are_linked_from_the_operators_console_page() -> None:
    text = (ROOT / "docs" / "operator" / "console.md").read_text()
    assert "](../console-overview.png)" in text and "](../console-company.png)" in text
