"""Optional extras: each is listed in the README, and a feature whose extra is missing raises one
line that names the extra to install (``pip install 'ferropool[EXTRA]'``).

A missing package is simulated in a fresh interpreter with ``sys.modules[name] = None``, which
makes ``import name`` raise ``ImportError`` as it does when the package is not installed.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_extra_is_listed_in_the_readme():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Optional extras") :]
    section = section[: section.index("\n## ", 1)]
    listed = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.M):
        listed |= set(re.findall(r"`([a-z-]+)`", row))
    assert listed == extras, f"README lists {sorted(listed)}, pyproject.toml has {sorted(extras)}"


# extra -> (packages made missing, code that uses the feature and prints the ImportError)
MISSING = {
    "plot": (
        ["matplotlib"],
        """
        from ferropool.compare.result import Comparison
        try:
            Comparison().plot("chart.png")
        except ImportError as e:
            print(e)
        """,
    ),
    "joblib": (
        ["joblib"],
        """
        try:
            import ferropool.joblib
        except ImportError as e:
            print(e)
        """,
    ),
    "dask": (
        ["distributed"],
        """
        try:
            from ferropool import DaskPool
        except ImportError as e:
            print(e)
        """,
    ),
    "ray": (
        ["ray"],
        """
        try:
            from ferropool import RayPool
        except ImportError as e:
            print(e)
        """,
    ),
    "numpy": (
        ["numpy"],
        """
        from ferropool import shared
        try:
            shared.Array(3)
        except ImportError as e:
            print(e)
        """,
    ),
}


def _run(missing: list[str], code: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    hide = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in missing)
    return subprocess.run(
        [sys.executable, "-c", hide + textwrap.dedent(code)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


@pytest.mark.parametrize("extra", list(MISSING))
def test_a_missing_extra_is_named_in_one_line(extra, tmp_path):
    missing, code = MISSING[extra]
    proc = _run(missing, code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1, proc.stdout  # one line
    assert f"pip install 'ferropool[{extra}]'" in proc.stdout, proc.stdout


def test_compare_plot_png_without_matplotlib_names_the_extra(tmp_path):
    proc = _run(
        ["matplotlib"],
        """
        from ferropool.__main__ import main
        raise SystemExit(main(["compare", "--quick", "--workload", "tiny", "--plot", "x.png"]))
        """,
        tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert (
        proc.stderr
        == "ferropool compare: --plot x.png needs matplotlib: pip install 'ferropool[plot]' (or write .html)\n"
    )
    assert not (tmp_path / "x.png").exists()
