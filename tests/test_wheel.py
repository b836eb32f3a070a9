"""The wheel that ``make wheel`` builds installs where there is no Rust toolchain, and works there.

``make test-wheel`` (part of ``make test``) builds the wheel and the sdist once, into ``dist/``,
and runs this file with ``FERROPOOL_WHEEL_DIR=dist``. Here the wheel is installed into a fresh
virtual environment (pip may fetch its dependencies, never build anything: ``--only-binary``)
and, with a ``PATH`` on which no ``cargo`` or ``rustc`` can be found, the README's examples run
in that environment, extracted as ``test_readme.py`` extracts them. Without
``FERROPOOL_WHEEL_DIR``, a wheel in ``dist/`` newer than every source file is used; if there is
none the tests are skipped, naming the command to run.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

from test_readme import BLOCKS, PROMISE

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The oldest glibc the wheel may need: manylinux_2_28 is what `make wheel` asks for.
MAX_GLIBC = (2, 28)
# Making the venv and installing into it (pip may download cloudpickle) run in the first test.
pytestmark = pytest.mark.timeout(180)
SOURCES = ("python", "src", "crates/ferropool-engine/src", "Cargo.toml", "Cargo.lock", "pyproject.toml")


def _dist() -> pathlib.Path:
    given = os.environ.get("FERROPOOL_WHEEL_DIR")
    dist = pathlib.Path(given) if given else ROOT / "dist"
    wheels = sorted(dist.glob("ferropool-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        pytest.skip(f"no wheel in {dist}: run `make test-wheel` (or `make wheel`)")
    if not given:
        newest = max(
            (
                p.stat().st_mtime
                for s in SOURCES
                for p in ([ROOT / s] if (ROOT / s).is_file() else (ROOT / s).rglob("*"))
            ),
            default=0.0,
        )
        if wheels[-1].stat().st_mtime < newest:
            pytest.skip(f"{wheels[-1].name} is older than the sources: run `make test-wheel`")
    return dist


@pytest.fixture(scope="module")
def wheel() -> pathlib.Path:
    found = sorted(_dist().glob("ferropool-*.whl"), key=lambda p: p.stat().st_mtime)
    return found[-1].resolve()


def _no_rust_path() -> str:
    """The ``PATH`` of this process without any folder that holds a Rust toolchain."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not _has_rust(d)]
    return os.pathsep.join(keep)


def _has_rust(folder: str) -> bool:
    return any(os.access(os.path.join(folder, tool), os.X_OK) for tool in ("cargo", "rustc", "rustup"))


class Venv:
    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.python = python  # its interpreter
        self.env = env  # the environment to run it in: its ``bin`` first on a ``PATH`` without Rust

    def run(self, *args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.python, *args], capture_output=True, text=True, env=self.env, cwd=cwd, timeout=60)


@pytest.fixture(scope="module")
def venv(wheel: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh virtual environment with the wheel installed."""
    home = tmp_path_factory.mktemp("wheel-venv")
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True, timeout=120)
    path = os.pathsep.join([str(home / "venv" / "bin"), _no_rust_path()])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP", "VIRTUAL_ENV", "PYTHON"))}
    env.update(PATH=path, PIP_DISABLE_PIP_VERSION_CHECK="1")
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    # --only-binary: a wheel, or fail; nothing may be compiled to install ferropool.
    python = str(home / "venv" / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--only-binary=:all:", str(wheel)],
        check=True,
        env=env,
        cwd=home,
        timeout=150,
    )
    return Venv(python, env)


def test_wheel_is_a_portable_abi3_manylinux_wheel(wheel):
    tags = re.fullmatch(r"ferropool-[^-]+-(?P<py>cp3\d+)-(?P<abi>[^-]+)-(?P<platform>.+)\.whl", wheel.name)
    assert tags, wheel.name
    assert tags["abi"] == "abi3", f"{wheel.name}: one wheel for every CPython 3.11+ needs the stable ABI"
    glibc = [tuple(map(int, m)) for m in re.findall(r"manylinux_(\d+)_(\d+)_", tags["platform"])]
    assert glibc and min(glibc) <= MAX_GLIBC, f"{wheel.name}: not a manylinux_2_28 (or older) wheel"
    if shutil.which("auditwheel") or _module_available("auditwheel"):
        shown = subprocess.run(
            [sys.executable, "-m", "auditwheel", "show", str(wheel)], capture_output=True, text=True, timeout=120
        )
        assert shown.returncode == 0, shown.stderr
        said = " ".join(shown.stdout.split())
        assert f'consistent with the following platform tag: "{tags["platform"].split(".")[0]}"' in said, said


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_sdist_holds_the_sources(wheel):
    (sdist,) = wheel.parent.glob("ferropool-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("pyproject.toml", "Cargo.toml", "crates/ferropool-engine/Cargo.toml", "src/lib.rs"):
        assert needed in names, f"{sdist.name} lacks {needed}"
    assert "python/ferropool/__init__.py" in names


def test_the_wheel_is_what_imports(venv, tmp_path):
    out = venv.run(
        "-c", "import ferropool, ferropool._core, sys; print(ferropool.__file__); print(sys.prefix)", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    module, prefix = out.stdout.split()
    assert module.startswith(prefix) and "site-packages" in module, out.stdout


README_BLOCKS = [p for p in BLOCKS if p.id.startswith("README.md:")]


@pytest.mark.parametrize("code", README_BLOCKS)
def test_readme_example_runs_from_the_wheel(venv, code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = venv.run(str(script), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    promised = [m.group(1).strip() for m in PROMISE.finditer(code)]
    assert promised, "a README example promises no output: it would check nothing"
    assert proc.stdout.split("\n")[: len(promised)] == promised
