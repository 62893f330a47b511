"""The documentation hangs together: every relative markdown link in README.md, CHANGELOG.md and docs/*.md points
to a file that exists, and the README stays a short front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

README_MAX_LINES = 250
# pages other work is writing; links to them may dangle until they land (empty when none is pending)
PENDING_PAGES: tuple[str, ...] = ()

# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line number, target without its #anchor) of every relative link of ``page``, outside code blocks."""
    found: list[tuple[int, str]] = []
    in_code = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE) or target.startswith("#"):
                continue  # an absolute URL (https:, mailto:) or an anchor on the same page
            found.append((number, target.split("#", 1)[0]))
    return found


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    pending = {(ROOT / p).resolve() for p in PENDING_PAGES}
    broken = [f"{page.relative_to(ROOT)}:{number}: {target}" for number, target in relative_links(page)
              if not (page.parent / target).resolve().exists() and (page.parent / target).resolve() not in pending]
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_the_link_check_sees_links() -> None:
    links = [target for _, target in relative_links(ROOT / "README.md")]
    assert "docs/README.md" in links and "CHANGELOG.md" in links


def test_readme_is_short() -> None:
    count = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines; keep it at most {README_MAX_LINES} (move detail to docs/)"
