"""What a plugin author does first: copy ``plugins/_template`` and run its tests.

The copy must test itself (not the template it came from), pass as copied, and fail once its
delivery is broken. Each run is a separate pytest process, as the author would start it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opcore_hooks.testing import plugin_beside

TEMPLATE = Path(__file__).resolve().parents[1] / "plugins" / "_template"


def run_tests(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", str(folder / "tests")],
        cwd=folder.parent, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def acme(tmp_path: Path) -> Path:
    copy = tmp_path / "acme"
    shutil.copytree(TEMPLATE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_copied_template_tests_itself_and_passes(acme: Path):
    result = run_tests(acme)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_a_copy_takes_its_name_from_its_folder(acme: Path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # plugin_beside puts the copy's parent on it
    copy = plugin_beside(str(acme / "tests" / "test_plugin.py"))
    try:
        assert copy.__name__ == "acme.plugin" and copy.NAME == "acme"
        assert copy.Settings.model_config["env_prefix"] == "OPCORE_ACME_"
    finally:
        for name in [n for n in sys.modules if n == "acme" or n.startswith("acme.")]:
            del sys.modules[name]


def test_a_copy_whose_claim_hook_is_broken_fails_its_tests(acme: Path):
    source = (acme / "plugin.py").read_text()
    hook = "    host.delivery(NAME).claim_created(claim, event)"
    assert hook in source
    (acme / "plugin.py").write_text(source.replace(hook, "    raise RuntimeError('broken copy')"))
    result = run_tests(acme)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "broken copy" in result.stdout
