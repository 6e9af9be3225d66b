"""Packaging and the gates: the docs gate fails on a warning, the version has one source, a built wheel works."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FILES = ["pyproject.toml", "README.md", "LICENSE", "guide_engine", "guide_integrations"]
"""What a wheel is built from (copied alone, so no stale ``build/`` folder can leak into it)."""


def project_version() -> str:
    """``[project] version`` of pyproject.toml: the one place it is written."""
    found = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert found, "pyproject.toml has no static [project] version"
    return found.group(1)


def docs_gate() -> list[str]:
    """The docs stage's command in .ci/checks (``stage docs python -m mkdocs build …``)."""
    (line,) = [line for line in (ROOT / ".ci" / "checks").read_text().splitlines() if line.startswith("stage docs ")]
    return shlex.split(line)[2:]


def test_the_docs_gate_fails_on_a_warning(tmp_path: Path) -> None:
    """.ci/checks' own mkdocs command, on a two-page site: a broken anchor fails it, the fixed link passes.

    ``--strict --quiet`` passed the broken anchor: ``--quiet`` drops the warnings ``--strict`` counts.
    """
    command = docs_gate()
    assert command[:1] == ["python"]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the section](other.md#no-such-section).\n")
    (docs / "other.md").write_text("# Other\n\n## A section (`x.py`)\n\nText.\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\ndocs_dir: docs\nsite_dir: site\nvalidation:\n  anchors: warn\n")

    def build() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *command[1:], "-f", str(tmp_path / "mkdocs.yml")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    broken = build()
    assert broken.returncode != 0, broken.stdout + broken.stderr
    (docs / "index.md").write_text("# Home\n\nSee [the section](other.md#a-section-xpy).\n")
    fixed = build()
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


def test_the_docs_state_the_version_of_pyproject() -> None:
    """docs/getting-started.md names the version; pyproject.toml is its one source (``guide --version`` reads it)."""
    version = project_version()
    page = (ROOT / "docs" / "getting-started.md").read_text()
    stated = re.findall(r"guide-attention (\d+\.\d+\.\d+[^\s*]*)", page)
    assert stated, "docs/getting-started.md does not say which version it documents"
    wheels = re.findall(r"guide_attention-(\d+\.\d+\.\d+[^-\s]*)-py3", page)
    assert set(stated) | set(wheels) == {version}


def build_wheel(into: Path) -> Path:
    """A wheel of this checkout, built without build isolation (nothing downloaded)."""
    source = into / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(into / "dist"), "."],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=source,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (into / "dist").glob("guide_attention-*.whl")
    return wheel


@pytest.mark.real_model
def test_a_built_wheel_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    """``pip install dist/*.whl`` in a fresh venv: py.typed, the licence, the version, ``guide`` and the demo.

    The venv gets this environment's dependencies through a ``.pth`` file (no download) and the wheel
    with ``--no-deps``; every command runs outside the checkout, so the code imported is the wheel's.
    """
    version = project_version()
    wheel = build_wheel(tmp_path)
    assert wheel.name == f"guide_attention-{version}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"guide_engine/py.typed", "guide_integrations/py.typed"} <= names
    assert f"guide_attention-{version}.dist-info/licenses/LICENSE" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    (purelib,) = [
        Path(p)
        for p in subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    ]
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
        + ["--ignore-installed", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=300, env=env, cwd=outside)

    where = run(str(python), "-c", "import guide_engine, guide_integrations; print(guide_engine.__file__)")
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).is_relative_to(purelib)
    assert run(str(venv / "bin" / "guide"), "--version").stdout == f"guide-attention {version}\n"
    generated = run(str(venv / "bin" / "guide"), "generate", "Name three colors.", "--max-new-tokens", "3")
    assert generated.returncode == 0, generated.stderr[-3000:]
    assert generated.stdout.strip()
    demo = run(str(python), str(ROOT / "examples" / "demo.py"), "--skip-long", "--max-new-tokens", "3")
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert demo.stdout.strip()
