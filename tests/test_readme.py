"""The README and every document in docs/ are checked: their examples run, their links resolve.

Every ```python block runs as a script in a fresh interpreter, and a line such as
``print(x)   # 49`` promises its output: the script's first lines of stdout must be those
promises, in order. A block that cannot run on its own (it needs a cluster, a server, a file)
is marked by an HTML comment on the line right before its opening fence::

    <!-- not run: needs a running Ray cluster -->

and is reported as skipped with that reason. Relative links (``docs/usage.md#backpressure``)
must name an existing file and, for a Markdown file, one of its headings.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# A fence may be indented (a block inside a list item): its body is dedented.
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->")
PROMISE = re.compile(r"print\(.*\)\s+# (.+)$", re.M)
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)
# The tree does not narrate its own history: dates and commands say when and how.
HISTORY = re.compile(r"\b(?:session|issue|round) \d+\b", re.I)


def _blocks() -> list:
    params = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = NOT_RUN.search(before)
            name = doc.relative_to(ROOT).as_posix()
            marks = [pytest.mark.skip(reason=f"{name}:{line} not run: {skip.group('reason')}")] if skip else []
            params.append(pytest.param(textwrap.dedent(m.group("code")), id=f"{name}:{line}", marks=marks))
    return params


BLOCKS = _blocks()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[(.*?)\]\(.*?\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(doc: pathlib.Path) -> set:
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    return {_slug(h) for h in HEADING.findall(text)}


def test_documents_have_examples():
    names = {p.id.split(":")[0] for p in BLOCKS}
    assert "README.md" in names, "README.md lost its Python examples"
    assert "docs/usage.md" in names, "docs/usage.md lost its Python examples"


@pytest.mark.parametrize("code", BLOCKS)
def test_example_runs(code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    promised = [m.group(1).strip() for m in PROMISE.finditer(code)]
    assert proc.stdout.split("\n")[: len(promised)] == promised


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve(doc):
    broken = []
    text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S)
    for m in LINK.finditer(text):
        target = m.group("target")
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_work_history(doc):
    found = [m.group(0) for m in HISTORY.finditer(doc.read_text())]
    assert not found, f"{doc.name} narrates work history: {found}"
