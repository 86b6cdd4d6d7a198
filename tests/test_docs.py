"""The repository documents itself: nothing points outside the clone, and the docs' references hold.

A clone alone must be enough to build, run, test and operate tap, so no file may lean on a
contract or design kept beside the checkout. Code comments cite the design as "DESIGN rule N":
each cited rule must exist in `docs/DESIGN.md`. Relative links in the Markdown pages must reach
files that exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".json", ".yml", ".yaml", ".lua", ".cfg", ".txt", ""}
SCANNED = ["tap", "actors", "tests", "loadgen", "props", "docs", "configs", "deploy", ".ci"]
TOP_FILES = ["README.md", "OPERATIONS.md", "Makefile", "Dockerfile", "pyproject.toml"]
# Built from parts so this file does not match itself.
OUTSIDE = re.compile(
    "|".join([r"\.\./" + "shared", r"/work/" + "shared", "shared/" + "API", "shared/" + "DESIGN"])
)
CITED_RULE = re.compile(r"DESIGN rules? (\d+)(?:\s*[–-]\s*(\d+))?")
RULE_HEADING = re.compile(r"^(\d+)\. \*\*", re.MULTILINE)
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def repo_text_files() -> Iterator[Path]:
    for name in TOP_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if ".venv" in path.parts or "__pycache__" in path.parts:
                continue
            if path.is_file() and path.suffix in TEXT_SUFFIXES:
                yield path


def design_rules() -> set[int]:
    return {int(n) for n in RULE_HEADING.findall(DESIGN.read_text(encoding="utf-8"))}


def test_no_file_refers_to_a_contract_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in repo_text_files()
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_the_outside_reference_pattern_catches_the_old_links() -> None:
    old_link = "see [`../" + "shared" + "/API.md`](../" + "shared" + "/API.md)"
    assert OUTSIDE.search(old_link)
    assert not OUTSIDE.search("see [`docs/API.md`](docs/API.md); state shared by processes")


def test_design_numbers_its_rules_without_gaps() -> None:
    rules = design_rules()
    assert rules == set(range(1, max(rules) + 1))
    assert len(rules) >= 14


def test_every_design_rule_a_comment_cites_exists() -> None:
    rules = design_rules()
    cited: dict[int, list[str]] = {}
    for path in repo_text_files():
        for match in CITED_RULE.finditer(path.read_text(encoding="utf-8", errors="replace")):
            first, last = int(match[1]), int(match[2] or match[1])
            for rule in range(first, last + 1):
                cited.setdefault(rule, []).append(str(path.relative_to(ROOT)))
    assert len(cited) >= 5, "the citation pattern no longer finds the comments"
    missing = {rule: where for rule, where in cited.items() if rule not in rules}
    assert missing == {}


def test_relative_links_in_the_markdown_pages_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if (ROOT / "OPERATIONS.md").exists():
        pages.append(ROOT / "OPERATIONS.md")
    broken = []
    for page in pages:
        for target in MD_LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert broken == []
