"""Imports point down: the import-linter contracts of pyproject.toml hold on this tree, and a
deliberate upward import breaks them (so the check is not vacuous)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = "robustreid layers point down"
NO_CONFIG = "below the builder nothing reads the Config"


def _lint_imports(cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run lint-imports in ``cwd`` on the package under ``cwd / "src"``."""
    assert LINT_IMPORTS.exists(), (
        f"{LINT_IMPORTS} not found: install the test extra (pip install -e '.[test]')")
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1",
           "PYTHONPATH": os.pathsep.join([str(cwd / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([str(LINT_IMPORTS), "--config", "pyproject.toml", *options],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_contracts_hold() -> None:
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 broken" in done.stdout


def _copy_with(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package and its contracts in ``tmp_path``, with ``line`` appended to the
    file ``module`` (relative to ``src/robustreid``)."""
    shutil.copytree(ROOT / "src" / "robustreid", tmp_path / "src" / "robustreid",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "robustreid" / module
    target.write_text(target.read_text() + f"\n{line}  # deliberate upward import\n")
    return tmp_path


def test_model_importing_the_engine_breaks_the_layers(tmp_path: Path) -> None:
    tree = _copy_with(tmp_path, "models/__init__.py", "import robustreid.engine")
    done = _lint_imports(tree, "--no-cache")
    assert done.returncode != 0, done.stdout
    assert f"{LAYERS} BROKEN" in done.stdout, done.stdout
    assert "robustreid.models is not allowed to import robustreid.engine" in done.stdout
    assert f"{NO_CONFIG} KEPT" in done.stdout, done.stdout


def test_clustering_reading_the_config_is_forbidden(tmp_path: Path) -> None:
    tree = _copy_with(tmp_path, "clustering/__init__.py", "import robustreid.config")
    done = _lint_imports(tree, "--no-cache")
    assert done.returncode != 0, done.stdout
    assert f"{NO_CONFIG} BROKEN" in done.stdout, done.stdout
    assert "robustreid.clustering is not allowed to import robustreid.config" in done.stdout
    assert f"{LAYERS} BROKEN" in done.stdout, done.stdout
