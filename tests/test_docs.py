"""The documentation: the site builds strictly without the network, the README stays an entry page,
every relative link resolves (on GitHub and on the site), and every environment variable the code
reads is on the settings page.

The settings table's sync with the code is tests/test_settings.py's; the architecture page against
the tree is tests/test_layout.py's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml

from nsfw_core.base.settings import SETTINGS, SETTINGS_PAGE
from tests.helpers.paths import ROOT

DOCS = ROOT / "docs"
README = ROOT / "README.md"
MKDOCS_YML = ROOT / "mkdocs.yml"
README_MAX_BYTES = 15 * 1024
# The shipped code and what starts it: every NSFW_* variable named there must be on the settings page.
CODE = ("nsfw_core", "nsfw_ui", "pages", "app.py", "streamlit_app.py", "run.sh", ".do/app.yaml")

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """The lines of a Markdown file outside fenced code blocks, with their numbers."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def _without_code_spans(line: str) -> str:
    return re.sub(r"(`+)(.+?)\1", "", line)


def _heading_text(raw: str) -> str:
    """What a heading shows: code spans keep their text, links their label, emphasis goes."""
    text = re.sub(r"(`+)(.+?)\1", r"\2", raw)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[*_]{1,3}([^*_]+)[*_]{1,3}", r"\1", text)


def github_slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    text = _heading_text(text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def mkdocs_slug(text: str) -> str:
    """Python-Markdown's ``toc`` anchor (the default slugify: ASCII, hyphens collapsed)."""
    text = unicodedata.normalize("NFKD", _heading_text(text)).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> tuple[set[str], set[str]]:
    """The anchors of a Markdown file's headings, as GitHub makes them and as the site makes them."""
    github: dict[str, int] = {}
    site: dict[str, int] = {}
    out_github: set[str] = set()
    out_site: set[str] = set()
    for _, line in prose_lines(path):
        m = HEADING.match(line)
        if not m:
            continue
        for slug, seen, out in ((github_slug(m.group(2)), github, out_github),
                                (mkdocs_slug(m.group(2)), site, out_site)):
            out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return out_github, out_site


def links(path: Path) -> list[tuple[int, str]]:
    """Every Markdown link and image target in the file's prose (code blocks and code spans left out)."""
    return [(number, m.group(1)) for number, line in prose_lines(path)
            for m in LINK.finditer(_without_code_spans(line))]


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I))


# ---------------------------------------------------------------- the site


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs build --strict: every page in the navigation, every link and anchor between pages resolves
    (mkdocs.yml's validation turns those into warnings, --strict into errors). About 2 s here."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
                           "--site-dir", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for page in sorted(DOCS.glob("*.md")):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"{page.name} was not built"
    assert (site / "classify.png").is_file() and (site / "calibrate.png").is_file()


def test_the_site_needs_no_network() -> None:
    """No web fonts, and no plugin but the offline search: building (and reading) the site fetches nothing."""
    config = yaml.safe_load(MKDOCS_YML.read_text())
    assert config["theme"]["name"] == "material"
    assert config["theme"]["font"] is False
    assert config["plugins"] == ["search"]
    assert config["docs_dir"] == "docs"


def test_every_page_is_in_the_navigation() -> None:
    def pages(nav: list[Any]) -> list[str]:
        out: list[str] = []
        for entry in nav:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                out.extend(pages(value) if isinstance(value, list) else [value])
        return out

    listed = pages(yaml.safe_load(MKDOCS_YML.read_text())["nav"])
    assert sorted(listed) == sorted(p.name for p in DOCS.glob("*.md"))
    assert len(listed) == len(set(listed))


def test_mkdocs_is_pinned_in_the_test_environment() -> None:
    docs = (ROOT / "requirements-docs.txt").read_text().splitlines()
    pins = [line for line in docs if line and not line.startswith("#")]
    assert any(line.startswith("mkdocs-material==") for line in pins)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^\s=]+", line) for line in pins), pins
    assert "-r requirements-docs.txt" in (ROOT / "requirements-dev.txt").read_text()


# ---------------------------------------------------------------- the README


def test_the_readme_is_an_entry_page() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; the manual belongs in docs/"
    text = README.read_text()
    # The two commands, each in a code block of its own (CI and the checker look for the test command).
    assert "```bash\n./run.sh    # the app:" in text
    assert "```bash\n./test.sh   # lint (ruff), types (mypy), then the whole test suite\n```" in text
    assert "curl -XPOST 'http://localhost:8080/predict?url=" in text
    assert "](docs/classify.png)" in text
    assert ".venv/bin/mkdocs serve" in text
    assert "## Licence" in text


def test_the_readme_links_every_page_of_the_docs() -> None:
    targets = {target.split("#")[0] for _, target in links(README)}
    missing = sorted(f"docs/{p.name}" for p in DOCS.glob("*.md") if f"docs/{p.name}" not in targets)
    assert missing == []
    assert "CHANGELOG.md" in targets


# ---------------------------------------------------------------- links


def _link_problems(path: Path, root: Path = ROOT) -> list[str]:
    docs = root / "docs"
    problems = []
    for number, target in links(path):
        if is_external(target):
            continue
        where = f"{path.relative_to(root)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if root not in dest.parents and dest != root:
            problems.append(f"{where}: leaves the repository")
            continue
        if path.parent == docs and docs not in dest.parents:
            problems.append(f"{where}: the site cannot follow a link out of docs/ (name the file in code)")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
                continue
            github, site = anchors(dest)
            if anchor not in github:
                problems.append(f"{where}: no heading gives GitHub's anchor #{anchor}")
            if path.parent == docs and anchor not in site:
                problems.append(f"{where}: no heading gives the site's anchor #{anchor}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    """Files exist, anchors are headings of the target (GitHub's and, for the docs, the site's slugs)."""
    assert _link_problems(path) == []


def test_the_link_check_sees_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Readme\n")
    (tmp_path / "docs" / "security.md").write_text((DOCS / "security.md").read_text())
    page = tmp_path / "docs" / "probe.md"
    page.write_text("# Probe\n\n[a](nope.md) [b](security.md#no-such-heading) [c](../README.md)\n"
                    "```\n[in code](nope2.md)\n```\n`[in a span](nope3.md)` [d](#probe) [e](https://example.com/x)\n"
                    "[f](security.md#sessions)\n")
    problems = _link_problems(page, root=tmp_path)
    assert [p.split(": ", 2)[1] for p in problems] == [
        "nope.md", "security.md#no-such-heading", "security.md#no-such-heading", "../README.md"], problems


def test_slugs_match_github_and_the_site() -> None:
    assert github_slug("Why `python app.py` and not `streamlit run`") == "why-python-apppy-and-not-streamlit-run"
    assert mkdocs_slug("Why `python app.py` and not `streamlit run`") == "why-python-apppy-and-not-streamlit-run"
    assert github_slug("Hostile URLs (SSRF)") == mkdocs_slug("Hostile URLs (SSRF)") == "hostile-urls-ssrf"
    assert github_slug("What one `apps-s-1vcpu-1gb` instance handles") == "what-one-apps-s-1vcpu-1gb-instance-handles"
    assert github_slug("A — B") == "a--b" and mkdocs_slug("A — B") == "a-b"


# ---------------------------------------------------------------- settings


def _variables_in_code() -> dict[str, set[str]]:
    """NSFW_* names in the shipped code, with the files naming them; a name ending in ``_`` (``NSFW_OIDC_*``)
    is a prefix."""
    found: dict[str, set[str]] = {}
    for entry in CODE:
        base = ROOT / entry
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.suffix in (".py", ".sh", ".yaml")]
        for path in files:
            for name in re.findall(r"(?<![A-Za-z0-9_])NSFW_[A-Z0-9_]*", path.read_text()):
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_setting_and_environment_variable_in_the_code_is_on_the_settings_page() -> None:
    page = SETTINGS_PAGE.read_text()
    on_page = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", page))
    names = {s.name for s in SETTINGS}
    assert names - on_page == set(), "settings missing from docs/settings.md"
    missing = {}
    for name, files in _variables_in_code().items():
        if name.endswith("_"):
            if not any(n.startswith(name) for n in names):
                missing[name + "*"] = files
        elif name not in on_page:
            missing[name] = files
    assert missing == {}, "named in the code but not on docs/settings.md (a setting, or 'Other environment " \
                          f"variables'): {missing}"
    assert {"APP_URL", "MALLOC_ARENA_MAX"} <= on_page
