"""The template type-checks: it is the code every plugin author copies, so what its hints say
must hold (an undefined name in an annotation once hid there, kept alive only by
``from __future__ import annotations``). The host's own modules are followed silently: this
checks the template's use of the plugin API, not the host's insides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_template_passes_mypy(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
         "--cache-dir", str(tmp_path / "mypy-cache"), str(ROOT / "plugins" / "_template")],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
