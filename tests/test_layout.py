"""The architecture page (docs/architecture.md) names every module, and the package has the structure it says."""

from __future__ import annotations

import ast
import re

from tests.helpers.paths import ROOT

ARCHITECTURE = ROOT / "docs" / "architecture.md"
# Where the modules live: the packages, the pages and the two entry points at the root.
MODULE_FOLDERS = ("nsfw_core", "nsfw_ui", "pages")
ROOT_MODULES = ("app.py", "streamlit_app.py")
# The sub-packages in the order the data flows through them (the page's sections follow it).
DATA_FLOW = ("nsfw_core/images/", "nsfw_core/inference/", "nsfw_core/state/", "nsfw_core/calibration/",
             "nsfw_core/http/")
ROW = re.compile(r"^\| `([^`]+\.py)` \|")


def modules_in_the_tree() -> set[str]:
    """Every Python file of the code, as a path from the root; an empty ``__init__.py`` only marks a
    sub-package (its section names it) and is left out."""
    found = {name for name in ROOT_MODULES if (ROOT / name).is_file()}
    for folder in MODULE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in path.parts or (path.name == "__init__.py" and not path.read_text().strip()):
                continue
            found.add(path.relative_to(ROOT).as_posix())
    return found


def modules_section() -> str:
    """The page's "## Modules" section: one table a package, one module a row."""
    text = ARCHITECTURE.read_text()
    start = text.index("\n## Modules\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def modules_on_the_page() -> list[str]:
    """The modules the section's tables list: the first cell of each row."""
    return [m.group(1) for line in modules_section().splitlines() if (m := ROW.match(line))]


def test_every_module_is_on_the_architecture_page_and_every_module_there_exists():
    listed = modules_on_the_page()
    tree = modules_in_the_tree()
    missing = sorted(tree - set(listed))
    extra = sorted(set(listed) - tree)
    twice = sorted({m for m in listed if listed.count(m) > 1})
    assert (missing, extra, twice) == ([], [], []), (
        "docs/architecture.md and the tree disagree. "
        f"Not on the page (add a row '| `path` | what it does |'): {missing}; "
        f"on the page but not in the tree (remove or rename the row): {extra}; listed twice: {twice}")


def test_each_module_is_listed_in_its_own_package_section():
    """A row sits under the section of the folder it is in: ``nsfw_core/images/decode.py`` under the heading
    naming `nsfw_core/images/`, a module of ``nsfw_core/`` itself under the one naming `nsfw_core/`."""
    section, misplaced = "", []
    for line in modules_section().splitlines():
        if line.startswith("### "):
            section = (re.findall(r"`([^`]+/)`", line) or [""])[0]
        elif m := ROW.match(line):
            folder = m.group(1).rpartition("/")[0] + "/" if "/" in m.group(1) else ""
            if folder.startswith("nsfw_core/state/review/"):
                folder = "nsfw_core/state/"
            if section and folder != section:
                misplaced.append(f"{m.group(1)} under {section}")
    assert misplaced == []


def test_the_architecture_page_follows_the_data():
    """Fetch/decode, then inference, state, calibration and http: the sections come in that order."""
    headings = [line for line in modules_section().splitlines() if line.startswith("### ")]
    found = {package: [i for i, h in enumerate(headings) if f"`{package}`" in h] for package in DATA_FLOW}
    assert all(len(at) == 1 for at in found.values()), f"one section heading per package: {found}"
    positions = [at[0] for at in found.values()]
    assert positions == sorted(positions), headings


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_never_imports_streamlit_or_the_ui():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "nsfw_core").rglob("*.py")
                 if any(n.split(".")[0] in ("streamlit", "nsfw_ui") for n in _imports(p))]
    assert offenders == []


def test_no_code_puts_paths_on_sys_path():
    offenders = [str(p.relative_to(ROOT)) for folder in ("nsfw_core", "nsfw_ui", "pages", "tests")
                 for p in (ROOT / folder).rglob("*.py")
                 if "sys.path.insert" in p.read_text() and p.name != "test_layout.py"]
    assert offenders == []
