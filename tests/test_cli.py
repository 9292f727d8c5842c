"""The command line itself: `seqsetvae --version`."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

import seqsetvae
from seqsetvae.cli import main
from seqsetvae.config import PROJECT_ROOT


def test_version_matches_the_package_metadata_in_pyproject():
    with open(PROJECT_ROOT / "pyproject.toml", "rb") as f:
        assert seqsetvae.__version__ == tomllib.load(f)["project"]["version"]


def test_version_flag_prints_the_version_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"seqsetvae {seqsetvae.__version__}\n"


def test_version_flag_from_the_shell():
    proc = subprocess.run([sys.executable, "-m", "seqsetvae", "--version"], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"seqsetvae {seqsetvae.__version__}"
