"""Paths in params: one resolver (seqsetvae.config.resolve_path) and the root it resolves against.

Rule: an absolute path is used as is; a relative one resolves against Params.root (the params file's
folder) and must stay inside it once `..` and symlinks are resolved; an escape is a ParamsError naming
the key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqsetvae.config import PROJECT_ROOT, ParamsError, load_params, params_from_dict, resolve_path
from seqsetvae.data.meds_source import ingest_meds
from seqsetvae.data.physionet2012 import ingest_physionet2012
from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path

CORPUS = Path(__file__).parent / "bad_inputs" / "physionet2012"
KEY = "data.meds.dir"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder with something outside it, as siblings in tmp_path."""
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "project"


def test_absolute_path_is_used_as_is(project):
    outside = project.parent / "outside" / "cohort"  # outside the root, and not existing: still fine
    assert resolve_path(str(outside), KEY, project) == outside


@pytest.mark.parametrize("value", ["data", "data/raw/x", "./data/../data/x", "not/yet/created"])
def test_relative_path_inside_the_root_resolves_against_it(project, value):
    assert resolve_path(value, KEY, project) == (project / value).resolve()


def test_relative_path_may_name_the_root_itself(project):
    assert resolve_path(".", KEY, project) == project.resolve()


@pytest.mark.parametrize("value", ["../outside", "..", "data/../../outside/x", "data/../../project2"])
def test_dotdot_escape_is_refused_naming_the_key(project, value):
    with pytest.raises(ParamsError) as err:
        resolve_path(value, KEY, project)
    message = str(err.value)
    assert message.startswith(f"{KEY}: {value!r} escapes the project directory {project.resolve()}")
    assert "give an absolute path" in message


def test_sibling_with_the_root_as_name_prefix_is_outside(tmp_path):
    """`/x/project2` starts with the string `/x/project` but is not inside it."""
    (tmp_path / "project").mkdir()
    (tmp_path / "project2").mkdir()
    with pytest.raises(ParamsError, match="escapes"):
        resolve_path("../project2", KEY, tmp_path / "project")


def test_symlink_pointing_outside_is_refused(project):
    (project / "data" / "link").symlink_to(project.parent / "outside", target_is_directory=True)
    with pytest.raises(ParamsError, match=f"^{KEY}: 'data/link/x' escapes the project directory"):
        resolve_path("data/link/x", KEY, project)


def test_symlink_pointing_inside_is_followed(project):
    (project / "real").mkdir()
    (project / "data" / "link").symlink_to(project / "real", target_is_directory=True)
    assert resolve_path("data/link", KEY, project) == (project / "real").resolve()


def test_root_reached_through_a_symlink_still_contains_its_paths(project):
    """The root itself may be a symlink (a project copy mounted elsewhere): both sides are resolved."""
    alias = project.parent / "alias"
    alias.symlink_to(project, target_is_directory=True)
    assert resolve_path("data", KEY, alias) == (project / "data").resolve()


@pytest.mark.parametrize("value", ["data/loop", "data/loop/x", "data/a/x"])
def test_symlink_loop_is_refused_naming_the_key(project, value):
    (project / "data" / "loop").symlink_to("loop")  # points at itself
    (project / "data" / "a").symlink_to("b")  # a -> b -> a
    (project / "data" / "b").symlink_to("a")
    with pytest.raises(ParamsError, match=f"^{KEY}: '{value}' cannot be resolved: a symbolic link loop"):
        resolve_path(value, KEY, project)


def test_empty_path_is_refused_naming_the_key(project):
    with pytest.raises(ParamsError, match=f"^{KEY}: empty path"):
        resolve_path("", KEY, project)


# --------------------------------------------------------------------------------------------------
# Params.root


def test_load_params_root_is_the_params_files_folder(project, params_dict, monkeypatch):
    (project / "params.yaml").write_text(yaml.safe_dump(params_dict))
    monkeypatch.chdir(project.parent)  # a relative params path, read from another working directory
    params = load_params(Path("project") / "params.yaml")
    assert params.root == project.resolve()
    assert params.root.is_absolute()


def test_params_from_dict_root_defaults_to_the_checkout_and_takes_an_argument(params_dict, project):
    assert params_from_dict(params_dict).root == PROJECT_ROOT
    assert params_from_dict(params_dict, root=project).root == project.resolve()


def test_root_is_not_a_params_key(params_dict):
    params = params_from_dict(params_dict)
    assert "root" not in params.to_dict()
    assert params.to_dict() == params_dict  # the YAML content, nothing added
    params_dict["root"] = "/somewhere"
    with pytest.raises(ParamsError, match="unknown key 'root'"):
        params_from_dict(params_dict)


def test_default_physionet2012_dir_is_inside_the_project():
    params = load_params(PROJECT_ROOT / "params.yaml")
    path = resolve_path(params.data.physionet2012.dir, "data.physionet2012.dir", params.root)
    assert path.is_relative_to(PROJECT_ROOT)


# --------------------------------------------------------------------------------------------------
# The sources use it


def test_physionet2012_escape_is_refused_before_reading(project, params_dict):
    shutil.copytree(CORPUS / "valid", project.parent / "outside" / "p12")
    params_dict["data"]["physionet2012"].update(dir="../outside/p12", sets=["a"], download=False)
    params = params_from_dict(params_dict, root=project)
    with pytest.raises(ParamsError, match="^data.physionet2012.dir: '../outside/p12' escapes"):
        ingest_physionet2012(params.data.physionet2012, params.root)
    # the same folder given as an absolute path is read
    params_dict["data"]["physionet2012"]["dir"] = str(project.parent / "outside" / "p12")
    params = params_from_dict(params_dict, root=project)
    assert ingest_physionet2012(params.data.physionet2012, params.root).report.subjects == 3


@pytest.mark.parametrize("key", ["dir", "labels"])
def test_meds_escape_is_refused_naming_its_key(project, params_dict, key):
    params_dict["data"]["meds"] = {"dir": "data/meds", "labels": "data/meds/labels.parquet", "window_start_column": None,
                                  key: "../outside"}
    params = params_from_dict(params_dict, root=project)
    with pytest.raises(ParamsError, match=f"^data.meds.{key}: '../outside' escapes"):
        ingest_meds(params.data.meds, params.root)


def _cli_ingest(params_file: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}  # run from a folder that is not the checkout
    return subprocess.run(
        [sys.executable, "-m", "seqsetvae", "ingest", "--params", str(params_file), "--out", str(out)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_resolves_relative_paths_against_the_params_file_not_the_cwd(project, params_dict):
    """A project copy elsewhere: its params.yaml names its own data relatively; the command runs from
    another folder. Then the same params pointing outside the copy: exit 2, the key named."""
    shutil.copytree(CORPUS / "valid", project / "data" / "raw" / "p12")
    params_dict["data"]["source"] = "physionet2012"
    params_dict["data"]["physionet2012"].update(dir="data/raw/p12", sets=["a"], download=False)
    params_file = project / "params.yaml"
    params_file.write_text(yaml.safe_dump(params_dict))
    elsewhere = project.parent / "outside"

    ok = _cli_ingest(params_file, project / "ingested", cwd=elsewhere)
    assert ok.returncode == 0, ok.stderr
    assert "3 subjects" in ok.stderr

    params_dict["data"]["physionet2012"]["dir"] = "../outside"
    params_file.write_text(yaml.safe_dump(params_dict))
    bad = _cli_ingest(params_file, project / "ingested2", cwd=elsewhere)
    assert bad.returncode == 2
    assert "data.physionet2012.dir: '../outside' escapes the project directory" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (project / "ingested2").exists()


def test_cli_out_under_a_regular_file_is_a_clear_error(project, params_dict):
    """`--out` below a file: exit 2 naming the file in the way, no traceback, nothing created."""
    params_file = project / "params.yaml"
    params_file.write_text(yaml.safe_dump(params_dict))
    (project / "notes.txt").write_text("a file, not a folder\n")
    for out in (project / "notes.txt" / "ingested", project / "notes.txt" / "deeper" / "ingested"):
        bad = _cli_ingest(params_file, out, cwd=project)
        assert bad.returncode == 2, bad.stderr
        assert f"argument --out {out}: {project / 'notes.txt'} is a file, not a folder" in bad.stderr
        assert "Traceback" not in bad.stderr
    assert sorted(p.name for p in project.iterdir()) == ["data", "notes.txt", "params.yaml"]


def test_atomic_write_under_a_regular_file_names_it(tmp_path):
    """The same for a stage's own outputs (not command-line paths): a DataError, not FileExistsError."""
    (tmp_path / "f").write_text("x")
    for target, is_dir in ((tmp_path / "f" / "out", True), (tmp_path / "f" / "sub" / "m.json", False)):
        with pytest.raises(DataError, match="is a file, not a folder") as err:
            with atomic_path(target, is_dir=is_dir):
                pass
        assert err.value.path == str(tmp_path / "f")
