"""The self-contained Python examples of README.md and docs/*.md run as written, and their links resolve."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARKERS = ("# not run by tests", "run/")


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


RUNNABLE = [
    (page, i, code)
    for page in PAGES
    for i, code in enumerate(b for b in python_blocks(page) if not any(m in b for m in SKIP_MARKERS))
]


def test_readme_has_runnable_examples():
    assert sum(page == README for page, _, _ in RUNNABLE) >= 2
    assert len(RUNNABLE) >= 13  # README + docs: at least as many as before the docs were split out


@pytest.mark.parametrize(
    "page,code", [(p, c) for p, _, c in RUNNABLE], ids=[f"{_name(p)}:block{i}" for p, i, _ in RUNNABLE]
)
def test_readme_example_runs(page, code, capsys):
    exec(compile(code, str(page), "exec"), {"__name__": "readme"})


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen, fence = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.*)", line)):
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def local_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_links_between_pages_resolve(page):
    for link in local_links(page):
        path, _, anchor = unquote(link).partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{_name(page)}: {link} -> no such file"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{_name(page)}: {link} -> no heading with that anchor"
