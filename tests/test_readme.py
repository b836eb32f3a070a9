"""Every ```python block of the README runs as a script and prints what its comments promise."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
# Blocks inside list items are indented: dedent them.
BLOCKS = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)]


def test_readme_has_examples():
    assert BLOCKS, "README.md lost its Python examples"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # Lines like `print(x)   # 49` promise an output: check them in order.
    promised = [m.group(1).strip() for m in re.finditer(r"print\(.*\)\s+# (.+)$", code, flags=re.M)]
    assert proc.stdout.split("\n")[: len(promised)] == promised
