"""The docs cannot drift: the settings page is what the settings classes generate, every setting
has a description, the site builds with warnings as errors (a broken link or anchor, a page
missing from the nav), and the README stays short with links that lead somewhere."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 300
# [text](target): the inline links of Markdown; a target ends at whitespace or ")"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def settings_page() -> ModuleType:
    """docs/settings_page.py, which is a script beside the pages, not a package module."""
    spec = importlib.util.spec_from_file_location("settings_page", ROOT / "docs/settings_page.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_page_is_generated_from_the_classes() -> None:
    page = settings_page()
    assert (ROOT / "docs/settings.md").read_text() == page.render(), (
        "docs/settings.md is stale: run .venv/bin/python docs/settings_page.py"
    )


def test_settings_page_check_names_the_difference(tmp_path: Path) -> None:
    page = settings_page()
    page.PAGE = tmp_path / "settings.md"
    page.PAGE.write_text(page.render().replace("GVLOOP_TRAINER_LR", "GVLOOP_TRAINER_LR_OLD"))
    assert page.main(["--check"]) == 1
    page.main([])
    assert page.main(["--check"]) == 0


def test_every_setting_has_a_description() -> None:
    page = settings_page()
    missing = page.undocumented()
    assert not missing, f"settings without a docstring: {', '.join(missing)}"
    assert len(list(page.fields(page.SECTIONS[0][1]))) > 0  # the walk sees the fields at all


def test_the_site_builds_strict(tmp_path: Path) -> None:
    config, site = ROOT / "mkdocs.yml", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # material's banner, not a warning of ours
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert (site / "settings/index.html").is_file()


def test_readme_is_short_and_its_links_lead_somewhere() -> None:
    readme = (ROOT / "README.md").read_text()
    lines = readme.count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}"
    targets = [t for t in LINK.findall(readme) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    assert targets, "no relative link found: the pattern no longer matches the README"
    broken = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not broken, f"README.md links to missing files: {broken}"
