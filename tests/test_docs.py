"""The repository's documentation links only to files inside the repository, and they exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / d / "README.md" for d in ("bench", "deploy", "tests")),
    ]
)
# [text](target): a relative target is a file of the repository; http(s) links are left alone.
LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_stay_in_the_repository_and_resolve(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        path = (doc.parent / target).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_the_readme_keeps_the_quick_start_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "\nbash tests/run.sh\n" in text
    assert "\npython3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e . &&" in text
