"""params.yaml: validated once against the JSON schema; errors name the key."""

from __future__ import annotations

import pytest
import yaml

from seqsetvae.config import Params, ParamsError, load_params, params_from_dict


def _write(tmp_path, d):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_repository_params_load_typed():
    params = load_params("params.yaml")
    assert isinstance(params, Params)
    assert params.data.source in {"synthetic", "physionet2012", "meds"}
    assert params.split.fractions.train + params.split.fractions.val + params.split.fractions.test == pytest.approx(1)


def test_unknown_key_is_named(tmp_path, params_dict):
    params_dict["data"]["synthetic"]["n_subject"] = 5
    with pytest.raises(ParamsError, match=r"unknown key 'data\.synthetic\.n_subject'"):
        load_params(_write(tmp_path, params_dict))


def test_unknown_section_is_named(params_dict):
    params_dict["pretrian"] = {}
    with pytest.raises(ParamsError, match=r"unknown key 'pretrian'"):
        params_from_dict(params_dict)


def test_wrong_type_is_named(tmp_path, params_dict):
    params_dict["loader"]["batch_size"] = "thirty-two"
    with pytest.raises(ParamsError, match=r"'loader\.batch_size'"):
        load_params(_write(tmp_path, params_dict))


def test_out_of_range_is_named(params_dict):
    params_dict["preprocess"]["window_hours"] = -1
    with pytest.raises(ParamsError, match=r"'preprocess\.window_hours'"):
        params_from_dict(params_dict)


def test_missing_key_is_named(params_dict):
    del params_dict["split"]["seed"]
    with pytest.raises(ParamsError, match=r"missing key 'split\.seed'"):
        params_from_dict(params_dict)


def test_fractions_must_sum_to_one(tmp_path, params_dict):
    params_dict["split"]["fractions"] = {"train": 0.8, "val": 0.1, "test": 0.2}
    with pytest.raises(ParamsError, match=r"split\.fractions"):
        load_params(_write(tmp_path, params_dict))


def test_python_object_yaml_tag_is_refused(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("data: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ParamsError, match="not valid \\(safe\\) YAML"):
        load_params(p)


def test_unreadable_file_named(tmp_path):
    with pytest.raises(ParamsError, match="cannot read params file"):
        load_params(tmp_path / "nope.yaml")
