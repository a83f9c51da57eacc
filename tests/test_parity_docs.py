"""Every parity section cited in the repository is a heading in docs/parity/*.md.

Code and docs cite the parity contract by section number (a section sign followed by ``N`` or ``N.M``). The contract
itself lives outside the repository, so the numbers must resolve to the notes in ``docs/parity/``: this test fails
when someone cites a section that has no heading there, or points a citation back at the external file.
No torch, no model: it only reads text files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY_DIR = ROOT / "docs" / "parity"
SCANNED = ("harness", "tests", "docs")  # docs/parity included: cross-references between the notes must resolve too
TEXT_SUFFIXES = {".py", ".md", ".html", ".txt", ".rst", ".yaml", ".yml", ".toml", ".json", ".cfg", ".ini"}

SECTION = "\u00a7"  # written as an escape so this file cites nothing itself
CITATION = re.compile(SECTION + r"(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}[ \t]+" + SECTION + r"(\d+(?:\.\d+)*)\b", re.M)
EXTERNAL = re.compile(r"PARITY(?:\.md)?[ \t]+" + SECTION)  # the old form that pointed at ../shared/PARITY.md
FILE_NAME = re.compile(r"^(\d{2})-[a-z0-9-]+\.md$")


def _note_files() -> list[Path]:
    return sorted(p for p in PARITY_DIR.glob("*.md") if p.name != "README.md")


def _headings() -> dict[str, list[str]]:
    """Section number -> the notes files (with repeats) whose headings carry it."""
    found: dict[str, list[str]] = {}
    for path in sorted(PARITY_DIR.glob("*.md")):
        for number in HEADING.findall(path.read_text(encoding="utf-8")):
            found.setdefault(number, []).append(path.name)
    return found


def _scanned_files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def _citations() -> list[tuple[str, int, str]]:
    """(file relative to the repo root, line number, section number) for every citation in the scanned trees."""
    out = []
    for path in _scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for lineno, line in enumerate(text.splitlines(), 1):
            out.extend((rel, lineno, number) for number in CITATION.findall(line))
    return out


def test_notes_exist_with_an_index():
    assert (PARITY_DIR / "README.md").is_file(), "docs/parity/README.md (the index) is missing"
    notes = _note_files()
    assert notes, "docs/parity/ holds no section notes"
    index = (PARITY_DIR / "README.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in notes if f"({p.name})" not in index]
    assert not unlisted, f"docs/parity/README.md does not link to: {', '.join(unlisted)}"


@pytest.mark.parametrize("path", _note_files(), ids=lambda p: p.name)
def test_each_note_file_is_one_top_level_section(path):
    """``NN-name.md`` holds exactly one level-2 heading for section NN, and only subsections of NN below it."""
    match = FILE_NAME.match(path.name)
    assert match, f"{path.name}: name notes files NN-topic.md after the section number"
    section = str(int(match.group(1)))
    text = path.read_text(encoding="utf-8")
    top = re.findall(r"^##[ \t]+" + SECTION + r"(\d+(?:\.\d+)*)\b", text, re.M)
    assert top == [section], f"{path.name}: expected one '## {SECTION}{section} ...' heading, found {top}"
    foreign = [n for n in HEADING.findall(text) if n.split(".")[0] != section]
    assert not foreign, f"{path.name}: headings of other sections {foreign}"


def test_subsection_headings_are_unique():
    """A subsection number (N.M) is defined by exactly one heading, so a search for it lands in one place."""
    repeated = {n: files for n, files in _headings().items() if "." in n and len(files) > 1}
    assert not repeated, f"subsection headings defined more than once: {repeated}"


def test_every_cited_section_has_a_heading():
    citations = _citations()
    assert len(citations) > 50, f"only {len(citations)} citations found; is the scan looking in the right place?"
    headings = _headings()
    missing = [f"{rel}:{lineno}: {SECTION}{number}" for rel, lineno, number in citations if number not in headings]
    assert not missing, ("cited sections with no heading in docs/parity/*.md (add the heading, or fix the number):\n"
                         + "\n".join(missing))


def test_no_citation_points_at_the_external_contract():
    offenders = []
    for path in _scanned_files():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(ROOT).as_posix()
        offenders += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(lines, 1) if EXTERNAL.search(line)]
    assert not offenders, ("cite sections as '" + SECTION + "N (docs/parity)', not the file outside the repository:\n"
                           + "\n".join(offenders))
