"""params.yaml: validated once against the JSON schema; errors name the key."""

from __future__ import annotations

import re

import pytest
import yaml

from seqsetvae import cli
from seqsetvae.config import MAX_ALIAS_VALUES, PROJECT_ROOT, Params, ParamsError, load_params, params_from_dict


def _write(tmp_path, d):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_repository_params_load_typed():
    params = load_params("params.yaml")
    assert isinstance(params, Params)
    assert params.data.source in {"synthetic", "physionet2012", "meds"}
    assert params.split.fractions.train + params.split.fractions.val + params.split.fractions.test == pytest.approx(1)


@pytest.mark.parametrize("path", sorted(p.relative_to(PROJECT_ROOT) for p in (PROJECT_ROOT / "docs").rglob("params.yaml")))
def test_recorded_runs_params_still_validate(path):
    """A results folder's params.yaml is what a user copies to reproduce it: a key added since must be added
    there too, with the value that reproduces the recorded run."""
    assert isinstance(load_params(PROJECT_ROOT / path), Params)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def test_the_benchmark_command_gives_the_recorded_runs_params():
    """docs/benchmark.md's `dvc exp run` command applied to params.yaml must give the params of the recorded
    benchmark (docs/results/physionet2012/params.yaml). A default changed since and not pinned by the command
    would make the documented command run something else than the recorded figures (pretrain.max_epochs did:
    the run used 6, the demo default is not). Keys the block sets only on its commented lines (optional
    extras) and trainer.progress_bar (display) may differ."""
    text = (PROJECT_ROOT / "docs" / "benchmark.md").read_text()
    block = text.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    overrides, optional = {}, set()
    for line in block.splitlines():
        for key, value in re.findall(r"-S '?([\w.]+)=([^' ]+)'?", line):
            if line.lstrip().startswith("#"):
                optional.add(key)
            else:
                overrides[key] = yaml.safe_load(value)  # DVC reads -S values as YAML
    assert "pretrain.max_epochs" in overrides and "data.source" in overrides, block
    ran = _flat(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text()))
    unknown = set(overrides) - set(ran)
    assert not unknown, f"the command sets keys params.yaml does not have: {unknown}"
    ran.update(overrides)
    recorded = _flat(yaml.safe_load((PROJECT_ROOT / "docs/results/physionet2012/params.yaml").read_text()))
    differ = {k for k in set(ran) | set(recorded) if ran.get(k, "<missing>") != recorded.get(k, "<missing>")}
    assert differ <= optional | {"trainer.progress_bar"}, {k: (ran.get(k), recorded.get(k)) for k in differ}


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


def test_observation_codes_is_a_count_of_codes(params_dict):
    """finetune.observation_codes: 0 (every code) or K > 0 codes; a negative or fractional value is refused."""
    assert params_from_dict(params_dict).finetune.observation_codes == params_dict["finetune"]["observation_codes"]
    for bad in (-1, 2.5, "all"):
        params_dict["finetune"]["observation_codes"] = bad
        with pytest.raises(ParamsError, match=r"'finetune\.observation_codes'"):
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


# --------------------------------------------------------------------------------------------------
# Numbers: finite, and an integer is an int (JSON Schema alone takes .nan, .inf and 20.0 as valid)


@pytest.mark.parametrize(
    "keys,value",
    [
        (("pretrain", "lr"), float("nan")),
        (("preprocess", "window_hours"), float("inf")),
        (("split", "fractions", "train"), float("nan")),
        (("split", "fractions", "val"), float("nan")),
        (("finetune", "focal_gamma"), float("-inf")),
        (("baseline", "logreg", "C"), [0.1, float("nan")]),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_key(tmp_path, params_dict, keys, value):
    section = params_dict
    for k in keys[:-1]:
        section = section[k]
    section[keys[-1]] = value
    path = _write(tmp_path, params_dict)
    assert ".nan" in path.read_text() or ".inf" in path.read_text()  # as a user would write it
    with pytest.raises(ParamsError, match=rf"invalid value for '{re.escape('.'.join(keys))}(\.1)?': .*not a finite number"):
        load_params(path)


@pytest.mark.parametrize(
    "keys,value",
    [
        (("data", "synthetic", "n_subjects"), 20.0),
        (("model", "d_model"), 64.0),
        (("loader", "batch_size"), 32.0),
        (("split", "folds"), [0.0]),
    ],
)
def test_a_float_is_not_an_integer(tmp_path, params_dict, keys, value):
    section = params_dict
    for k in keys[:-1]:
        section = section[k]
    section[keys[-1]] = value
    with pytest.raises(ParamsError, match=rf"invalid value for '{re.escape('.'.join(keys))}(\.0)?': .* is not an integer"):
        load_params(_write(tmp_path, params_dict))


def test_integer_in_a_oneof_refuses_a_float_too(params_dict):
    params_dict["trainer"]["devices"] = 2.0
    with pytest.raises(ParamsError, match=r"'trainer\.devices'"):
        params_from_dict(params_dict)


def test_limit_batches_keep_lightnings_float_and_int_meanings(params_dict):
    params_dict["trainer"].update(limit_train_batches=1.0, limit_val_batches=3)
    trainer = params_from_dict(params_dict).trainer
    assert type(trainer.limit_train_batches) is float and type(trainer.limit_val_batches) is int
    params_dict["trainer"]["limit_train_batches"] = float("nan")
    with pytest.raises(ParamsError, match=r"'trainer\.limit_train_batches'"):
        params_from_dict(params_dict)


# --------------------------------------------------------------------------------------------------
# The params file itself: encoding, duplicate keys, aliases


def test_params_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    lines[4] = lines[4].rstrip("\n") + "  # caf\xe9\n"  # one Latin-1 byte in a comment on line 5
    path = tmp_path / "params.yaml"
    path.write_bytes("".join(lines).encode("latin-1"))
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(path))}:5: not UTF-8 text \(byte 0xe9"):
        load_params(path)


def test_duplicate_key_is_refused_naming_both_lines(tmp_path):
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("dir: data/raw/physionet2012"))
    lines.insert(first + 2, "    dir: somewhere/else\n")
    path = tmp_path / "params.yaml"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ParamsError, match=rf":{first + 3}: .*duplicate key 'dir' at lines {first + 1} and {first + 3}"):
        load_params(path)


def test_duplicate_key_in_a_flow_mapping_is_refused(tmp_path):
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    assert "fractions: {train: 0.8, val: 0.1, test: 0.1}" in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("test: 0.1}", "test: 0.1, val: 0.2}", 1), encoding="utf-8")
    with pytest.raises(ParamsError, match=r"duplicate key 'val' at line \d+, columns \d+ and \d+"):
        load_params(path)


def _with_log_transform(value: str) -> str:
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    assert "  log_transform: auto " in text
    return text.replace("  log_transform: auto ", f"  log_transform: {value} ", 1)


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Nine levels of nine aliases (9**9 strings once expanded) as the value of preprocess.log_transform:
    issue 15 saw it expand until MemoryError (figures: docs/benchmark.md). Refused while the file is parsed."""
    bomb = "&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"
    for level in range(1, 10):
        bomb = f"&a{level} [{bomb}, " + ", ".join([f"*a{level - 1}"] * 8) + "]"
    path = tmp_path / "params.yaml"
    path.write_text(_with_log_transform(bomb), encoding="utf-8")
    with pytest.raises(ParamsError, match=rf"{re.escape(str(path))}:\d+: .*aliases expand to more than {MAX_ALIAS_VALUES} values"):
        load_params(path)


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(_with_log_transform("&r [a, *r]"), encoding="utf-8")
    with pytest.raises(ParamsError, match=r"alias \*r refers to a value that contains it"):
        load_params(path)


def test_plain_anchors_aliases_and_merge_keys_still_work(tmp_path):
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    text = text.replace("  seed: 0                   # same seed", "  seed: &seed 7              # same seed", 1)
    text = text.replace("  seed: 0\n  predefined_csv", "  seed: *seed\n  predefined_csv", 1)
    text = text.replace("random_backbone: {backbone: random,", "random_backbone: &variant {backbone: random,", 1)
    text = text.replace("labels_10: {backbone: pretrained,", "labels_10: {<<: *variant, backbone: pretrained,", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    params = load_params(path)
    assert params.data.synthetic.seed == params.split.seed == 7
    assert params.ablation.variants["labels_10"].backbone == "pretrained"  # the key beside `<<` wins


def test_cli_exits_2_on_a_params_file_error(tmp_path, caplog):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"data:\n  source: synthetic # \xff\n")
    assert cli.main(["ingest", "--params", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"{path}:2: not UTF-8 text" in caplog.text
    assert not (tmp_path / "out").exists()
