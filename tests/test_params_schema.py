"""Params are defined once, in seqsetvae/config.py's dataclasses: workflow/schemas/params.schema.json is
generated from them (`python -m seqsetvae.config --write-schema`), and the cross-key rules live there only."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from pydantic import TypeAdapter, ValidationError

from seqsetvae import config

ROOT = Path(config.__file__).resolve().parents[1]


def test_the_committed_schema_is_the_generated_one():
    committed = config.SCHEMA_PATH.read_text(encoding="utf-8")
    assert committed == config.schema_text(), (
        "workflow/schemas/params.schema.json differs from seqsetvae/config.py: run "
        "python -m seqsetvae.config --write-schema and commit the file")


def test_the_check_command_fails_on_a_stale_schema(tmp_path, monkeypatch):
    assert config.main(["--check"]) == 0
    stale = tmp_path / "params.schema.json"
    stale.write_text(config.schema_text().replace('"minimum": 4,', '"minimum": 5,', 1), encoding="utf-8")
    monkeypatch.setattr(config, "SCHEMA_PATH", stale)
    assert config.main(["--check"]) == 1
    config.main(["--write-schema"])
    assert config.main(["--check"]) == 0 and stale.read_text(encoding="utf-8") == config.schema_text()


def test_the_schema_is_valid_json_schema_and_every_key_has_one():
    schema = config.params_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    raw = config.read_yaml(ROOT / "params.yaml")

    def keys(value, schema, path=""):  # every key params.yaml sets is a property of its section's schema
        if isinstance(value, dict) and schema.get("type") == "object":
            props = schema.get("properties")
            for k, v in value.items():
                sub = props[k] if props is not None else schema["additionalProperties"]
                assert props is None or k in props, f"{path}{k}"
                keys(v, sub, f"{path}{k}.")

    keys(raw, schema)
    assert set(schema["required"]) == set(raw) == {f for f in config.Params.__dataclass_fields__ if f != "root"}


def test_pydantic_reads_the_same_definition():
    """The dataclasses' annotations are pydantic's: it accepts params.yaml and refuses what the schema refuses."""
    adapter = TypeAdapter(config.Params)
    raw = config.read_yaml(ROOT / "params.yaml")
    loaded = config.load_params(ROOT / "params.yaml")
    assert adapter.validate_python({**raw, "root": ROOT}).to_dict() == loaded.to_dict()
    bad = copy.deepcopy(raw)
    bad["model"]["transformer"]["n_heads"] = 65
    with pytest.raises(ValidationError, match=r"model\.transformer\.n_heads"):
        adapter.validate_python({**bad, "root": ROOT})
    with pytest.raises(config.ParamsError, match=r"'model\.transformer\.n_heads'"):
        config.params_from_dict(bad)


def test_the_check_command_passes_on_the_committed_schema():
    done = subprocess.run([sys.executable, "-m", "seqsetvae.config", "--check"], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_the_finetune_stage_keeps_no_copy_of_the_cross_key_rules():
    """The head rules (backbone none, label subsamples) have one home, config.head_problem; the stage calls it."""
    stage = (ROOT / "seqsetvae" / "stages" / "finetune.py").read_text(encoding="utf-8")
    assert "head_problem(" in stage
    for phrase in ("needs inputs", "to unfreeze", "needs unfreeze none"):
        assert phrase not in stage, phrase
