"""The README's "Project layout" names every module, and the package has the structure it says."""

from __future__ import annotations

import ast
import re

from tests.helpers.paths import ROOT


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Project layout")
    return text[start:text.index("\n## ", start + 1)]


def test_every_module_is_in_the_readme_layout():
    layout = _layout()
    missing = []
    for folder in ("nsfw_core", "nsfw_ui", "pages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name in ("__init__.py", "__main__.py"):
                continue
            stem = path.stem
            if not re.search(rf"`[^`]*\b{re.escape(stem)}(\.py)?\b[^`]*`", layout):
                missing.append(str(path.relative_to(ROOT)))
    assert missing == []


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
