"""A plugin binds to the host's API and nothing else (issue #24): ``opcore_hooks`` itself, and
``opcore_hooks.standins`` for a stand-in helpdesk and a demo; a plugin's tests may also use
``opcore_hooks.testing``. The host's other modules can then move without breaking a plugin.

Every import is read from the source, function-local ones included, in every plugin folder
(the template's too, so a copied plugin starts clean)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
API = {"opcore_hooks", "opcore_hooks.standins"}
TEST_API = API | {"opcore_hooks.testing"}
FILES = sorted(p for p in PLUGINS.rglob("*.py") if "__pycache__" not in p.parts)


def host_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] == "opcore_hooks"]
    return found


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(PLUGINS)) for p in FILES])
def test_a_plugin_imports_only_the_hosts_api(path):
    allowed = TEST_API if "tests" in path.relative_to(PLUGINS).parts else API
    wrong = [f"line {line}: {name}" for line, name in host_imports(path) if name not in allowed]
    assert not wrong, f"{path.relative_to(PLUGINS)} reaches past the host's API ({', '.join(sorted(allowed))}): {wrong}"


def test_the_check_sees_a_function_local_import(tmp_path):
    sample = tmp_path / "plugin.py"
    sample.write_text("def f():\n    from opcore_hooks.cli import fail\n")
    assert host_imports(sample) == [(2, "opcore_hooks.cli")]
