"""Typed params: `params.yaml` -> validated, frozen dataclasses.

`params.yaml` is the only place a value is set. It is validated once, against the JSON schema in
`workflow/schemas/params.schema.json` (the same file Snakemake's `validate()` uses), and then turned into
the dataclasses below. Any unknown key, wrong type or out-of-range value stops the caller with a
`ParamsError` naming the key, before a stage does any work. Two types are read more strictly than JSON
Schema reads them: a number is finite, and an integer is an int (not 20.0). The file itself must be UTF-8
YAML without a key given twice in one mapping and with aliases bounded (`read_yaml`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.json"


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message names the file and the key."""


# --------------------------------------------------------------------------------------------------
# The typed view of params.yaml: one dataclass per section. No defaults here on purpose.


@dataclass(frozen=True)
class SyntheticParams:
    n_subjects: int
    seed: int
    positive_rate: float


@dataclass(frozen=True)
class PhysioNet2012Params:
    dir: str
    sets: list[str]
    download: bool
    url: str


@dataclass(frozen=True)
class MedsParams:
    dir: str | None
    labels: str | None


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "physionet2012", "meds"]
    shard_subjects: int
    synthetic: SyntheticParams
    physionet2012: PhysioNet2012Params
    meds: MedsParams


@dataclass(frozen=True)
class Fractions:
    train: float
    val: float
    test: float


@dataclass(frozen=True)
class SplitParams:
    protocol: Literal["random", "predefined", "physionet2012_set_a_test"]
    folds: list[int]
    fractions: Fractions
    seed: int
    predefined_csv: str | None
    # predefined: a labelled subject the CSV does not list in a fold is an error, or left out and counted
    unlisted: Literal["refuse", "exclude"]


@dataclass(frozen=True)
class PreprocessParams:
    window_hours: float
    normalisation: Literal["robust", "standard"]
    log_transform: str | list[str]
    log_auto_min_skew: float
    clip: float
    duplicates: Literal["mean", "last", "keep"]
    min_code_count: int
    descriptors: Literal["admission_set", "none"]
    # Worker processes over the shards (seqsetvae/threads.py: auto = the runner's cores). Changes the speed,
    # never the output, and is left out of the preprocess report.
    num_workers: int | Literal["auto"]


@dataclass(frozen=True)
class LoaderParams:
    batch_size: int
    bucket_size: int
    max_sets: int
    max_events_per_set: int
    num_workers: int
    seed: int


@dataclass(frozen=True)
class SetEncoderParams:
    n_isab: int
    n_heads: int
    n_inducing: int
    ff_dim: int


@dataclass(frozen=True)
class TransformerParams:
    n_layers: int
    n_heads: int
    ff_dim: int
    n_time_freqs: int


@dataclass(frozen=True)
class ModelParams:
    d_model: int
    latent_dim: int
    value_hidden: int
    decoder_hidden: int
    decoder_time: bool  # the set decoder sees when the set it reconstructs happens (time encoding of set t)
    dropout: float
    set_encoder: SetEncoderParams
    transformer: TransformerParams


@dataclass(frozen=True)
class PretrainParams:
    seed: int
    max_epochs: int
    lr: float
    weight_decay: float
    grad_clip_norm: float
    beta_max: float
    kl_warmup_steps: int
    free_bits: float
    forecast_weight: float
    active_unit_threshold: float


@dataclass(frozen=True)
class PoolingParams:
    last: bool
    attention: bool
    windows_hours: list[float]


@dataclass(frozen=True)
class FinetuneParams:
    seed: int
    max_epochs: int
    lr: float
    backbone_lr: float
    weight_decay: float
    grad_clip_norm: float
    fusion: Literal["mu_only", "simple_concat", "enhanced_concat"]
    pooling: PoolingParams
    head_hidden: int
    head_dropout: float
    backbone_projection: int
    imbalance: Literal["pos_weight", "focal", "none"]
    focal_gamma: float
    aux_recon_weight: float
    aux_kl_weight: float
    unfreeze: Literal["none", "transformer", "all"]
    inputs: Literal["backbone", "backbone_and_observation", "observation"]
    calibration: Literal["platt", "none"]


@dataclass(frozen=True)
class LogRegParams:
    C: list[float]
    max_iter: int


@dataclass(frozen=True)
class GBMParams:
    learning_rate: list[float]
    max_leaf_nodes: list[int]
    l2_regularization: list[float]
    max_iter: int
    early_stopping: bool
    validation_fraction: float
    n_iter_no_change: int


@dataclass(frozen=True)
class BaselineParams:
    seed: int
    num_threads: int | Literal["auto"]  # seqsetvae/threads.py
    categorical_descriptors: list[str]
    logreg: LogRegParams
    gbm: GBMParams
    # Codes the models see at most: the ones measured in the most training samples (both models densify
    # their training rows, about 8 B x train samples x 7 x max_codes per copy). None: every train code.
    max_codes: int | None = None


@dataclass(frozen=True)
class EvaluateParams:
    n_bootstrap: int
    seed: int
    ci: float
    calibration_bins: int


def variant_unfreeze(backbone: str, own: str | None, inherited: str) -> str:
    """The one home of the rule: a variant's own unfreeze, else finetune.unfreeze, except that a variant with
    no backbone has nothing to unfreeze and never inherits it."""
    if own is not None:
        return own
    return "none" if backbone == "none" else inherited


@dataclass(frozen=True)
class AblationVariant:
    backbone: Literal["pretrained", "random", "none"]
    label_fraction: float
    # What the variant's head sees, where it differs from the finetune section's (None: the same). Lets one
    # pipeline run hold the seed's frozen protocol (the backbone alone, no bottleneck) beside the main model.
    inputs: Literal["backbone", "backbone_and_observation", "observation"] | None = None
    backbone_projection: int | None = None
    # Which backbone modules train with the head (None: finetune.unfreeze). `end_to_end` sets `all`, so the
    # end-to-end row runs beside the frozen ones in one pipeline run. A variant with backbone none has nothing
    # to unfreeze: it does not inherit finetune.unfreeze, so `-S finetune.unfreeze=all` keeps the no_backbone
    # control running (its own unfreeze other than none is refused by check_cross_keys).
    unfreeze: Literal["none", "transformer", "all"] | None = None

    def settings(self) -> dict[str, Any]:
        """The keys this variant sets in ablation.variants (those left out are the finetune section's)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def head(self, finetune: FinetuneParams) -> FinetuneParams:
        """The finetune section with this variant's head settings put in."""
        unfreeze = variant_unfreeze(self.backbone, self.unfreeze, finetune.unfreeze)
        own = (("inputs", self.inputs), ("backbone_projection", self.backbone_projection), ("unfreeze", unfreeze))
        changes = {k: v for k, v in own if v is not None}
        return dataclasses.replace(finetune, **changes)


@dataclass(frozen=True)
class AblationParams:
    run: list[str]
    seed: int
    variants: dict[str, AblationVariant]

    def variant(self, name: str) -> AblationVariant:
        if name not in self.variants:
            raise ParamsError(f"ablation.variants: no variant {name!r} (defined: {', '.join(sorted(self.variants))})")
        return self.variants[name]


@dataclass(frozen=True)
class LabelEfficiencyParams:
    """Label efficiency (docs/benchmark.md): the head and the baselines on nested, seeded, label-stratified
    subsamples of the training split (seqsetvae.data.splits.label_subsample); val and test stay whole."""

    run: list[int]  # folds to run it on: a subset of split.folds ([]: none, the default pipeline stays cheap)
    fractions: list[float]  # shares of the training labels, each in (0, 1], increasing
    backbones: list[Literal["pretrained", "random"]]  # SeqSetVAE's frozen backbone: pretrained or random init
    baselines: list[Literal["logreg", "gbm"]]  # baseline models fitted on the same subsamples
    seed: int  # seed of the subsamples (the same subsample for every model at one fold and fraction)


@dataclass(frozen=True)
class ReportParams:
    dpi: int


@dataclass(frozen=True)
class TrainerParams:
    accelerator: Literal["auto", "cpu", "gpu", "mps"]
    devices: int | list[int]  # a count per node, or device ids; passed to Lightning unchanged
    num_nodes: int
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"]
    precision: Literal["32-true", "16-mixed", "bf16-mixed"]
    deterministic: bool | Literal["warn"]
    num_threads: int | Literal["auto"]  # seqsetvae/threads.py
    early_stopping_patience: int
    # A float is a fraction of the epoch's batches, an int a number of batches (Lightning's convention).
    limit_train_batches: int | float
    limit_val_batches: int | float
    log_every_n_steps: int
    progress_bar: bool


@dataclass(frozen=True)
class Params:
    data: DataParams
    split: SplitParams
    preprocess: PreprocessParams
    loader: LoaderParams
    evaluate: EvaluateParams
    model: ModelParams
    pretrain: PretrainParams
    finetune: FinetuneParams
    trainer: TrainerParams
    baseline: BaselineParams
    ablation: AblationParams
    label_efficiency: LabelEfficiencyParams
    report: ReportParams
    # Not a params.yaml key (never validated or serialised): the folder that relative paths in params
    # resolve against, i.e. the folder of the params file (see resolve_path).
    root: Path = dataclasses.field(kw_only=True, metadata={"yaml": False})

    def to_dict(self) -> dict[str, Any]:
        """The params.yaml content (without `root`, which depends on where the file was read from)."""
        return {f.name: _plain(getattr(self, f.name)) for f in _yaml_fields(Params)}


# --------------------------------------------------------------------------------------------------
# Loading and validation


def _schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def _key_of(error: jsonschema.ValidationError) -> str:
    """Dotted key path of a schema violation; for an unknown key, the unknown key itself."""
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return ".".join(parts + extra[:1]) or "<top level>"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return ".".join(parts + missing[:1]) or "<top level>"
    return ".".join(parts) or "<top level>"


# The schema's types as this project reads them (Snakemake's validate() uses JSON Schema's own, which are
# looser): a "number" is finite (YAML's .nan / .inf are refused), and an "integer" is an int, not a float
# with no fractional part (JSON Schema calls 20.0 an integer; `range(20.0)` would then fail in a stage).
def _is_number(checker: Any, instance: Any) -> bool:
    if isinstance(instance, bool) or not isinstance(instance, (int, float)):
        return False
    return isinstance(instance, int) or math.isfinite(instance)


def _is_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": _is_number, "integer": _is_integer}
    ),
)


def _describe(err: jsonschema.ValidationError) -> str:
    """The validator's message, plainer for the two number rules above."""
    value, types = err.instance, err.validator_value
    if err.validator == "type" and isinstance(value, float):
        types = [types] if isinstance(types, str) else list(types)
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if "integer" in types:
            return f"{value!r} is not an integer (write it without a decimal point)"
    return err.message


def validate(raw: Any, source: str = "params.yaml") -> None:
    """Raise ParamsError naming the first offending key (the most specific error first)."""
    validator = _Validator(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (-len(e.absolute_path), e.path))
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors) if len(errors) > 1 else errors[0]
    key = _key_of(err)
    if err.validator == "additionalProperties":
        msg = f"unknown key '{key}'"
    elif err.validator == "required":
        msg = f"missing key '{key}'"
    else:
        msg = f"invalid value for '{key}': {_describe(err)}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    raise ParamsError(f"{source}: {msg}{more}")


def _plain(value: Any) -> Any:
    """dataclasses.asdict, less the optional keys left out of the YAML (default None): to_dict() gives back the
    YAML content, so run fingerprints do not change when an optional key is added to the params."""
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(v) for f in dataclasses.fields(value)
                if not ((v := getattr(value, f.name)) is None and f.default is None)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return copy.deepcopy(value)


def _yaml_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields of a params dataclass that are params.yaml keys (Params.root is not)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]


def _build(cls: Any, value: Any, **extra: Any) -> Any:
    """Recursively build the dataclass `cls` from validated plain data; `extra` sets its non-YAML fields."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _build(hints[f.name], value[f.name]) for f in _yaml_fields(cls)
                      if f.name in value or f.default is dataclasses.MISSING}, **extra)  # optional keys: default
    if typing.get_origin(cls) is dict and dataclasses.is_dataclass(item := typing.get_args(cls)[1]):
        return {k: _build(item, v) for k, v in value.items()}  # e.g. ablation.variants: name -> variant
    return copy.deepcopy(value)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, val in overrides.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


# Aliases (`*name`) may add at most this many values to a params file beyond what is written in it. A
# params file needs few or none; a "billion laughs" file (aliases of aliases) is refused here, at once,
# instead of expanding into gigabytes while it is validated.
MAX_ALIAS_VALUES = 10_000


class _ParamsLoader(yaml.SafeLoader):
    """The safe loader (no tags that construct Python objects), which also refuses a key given twice in one
    mapping (YAML would keep the last silently), an alias of itself, and aliases that expand beyond
    MAX_ALIAS_VALUES values."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._complete: set[int] = set()  # ids of the nodes composed so far (an alias may only name these)
        self._sizes: dict[int, int] = {}  # id of a node -> values in it once its aliases are expanded
        self._alias_values = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if not self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._complete.add(id(node))
            return node
        event = self.peek_event()
        node = super().compose_node(parent, index)  # refuses an undefined alias
        if id(node) not in self._complete:
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} refers to a value that contains it", event.start_mark
            )
        self._alias_values += self._size(node)
        if self._alias_values > MAX_ALIAS_VALUES:
            raise yaml.composer.ComposerError(
                None, None,
                f"aliases expand to more than {MAX_ALIAS_VALUES} values (at *{event.anchor}); "
                "a params file writes its values out",
                event.start_mark,
            )
        return node

    def _size(self, node: Any) -> int:
        """Values in `node` with every alias in it expanded; linear in the distinct nodes (memoised)."""
        if id(node) not in self._sizes:
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            else:
                children = []
            self._sizes[id(node)] = 1 + sum(self._size(child) for child in children)
        return self._sizes[id(node)]

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base`: the keys written beside it override the merged ones, by design
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class refuses it
                if seen is not key_node:
                    a, b = seen.start_mark, key_node.start_mark
                    where = (f"lines {a.line + 1} and {b.line + 1}" if a.line != b.line
                             else f"line {a.line + 1}, columns {a.column + 1} and {b.column + 1}")
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} at {where} (keep one)", b
                    )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """Read a params file: UTF-8, the safe loader (tags that would construct Python objects are refused),
    no key twice in one mapping, aliases bounded (see _ParamsLoader). Any problem is a ParamsError naming
    the file and, where there is one, the line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParamsError(f"{path}: cannot read params file: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ParamsError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
            "save the params file as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"{path}{where}: not valid (safe) YAML: {problem}") from None
    except RecursionError:
        raise ParamsError(f"{path}: not valid (safe) YAML: nested too deeply") from None


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Load, validate and type params.yaml; `overrides` (nested dict) is merged in before validation.
    Relative paths in it resolve against the file's folder (`Params.root`), not the working directory."""
    raw = read_yaml(path)
    if overrides:
        raw = deep_merge(raw if isinstance(raw, dict) else {}, overrides)
    validate(raw, source=str(path))
    check_cross_keys(raw, source=str(path))
    return _build(Params, raw, root=Path(path).resolve().parent)


def check_cross_keys(raw: dict[str, Any], source: str = "params.yaml") -> None:
    """The rules that tie keys together, which the JSON schema cannot state; run once, after the schema.
    A ParamsError names the key (and the one it depends on)."""
    unknown = [v for v in raw["ablation"]["run"] if v not in raw["ablation"]["variants"]]
    if unknown:
        raise ParamsError(f"{source}: invalid value for 'ablation.run': {unknown} not defined in 'ablation.variants'")
    for name in raw["ablation"]["run"]:  # a variant defined but not run is not checked (the stage checks it too)
        variant = raw["ablation"]["variants"][name]
        inputs = variant.get("inputs", raw["finetune"]["inputs"])
        if variant["backbone"] == "none" and inputs == "backbone":
            raise ParamsError(f"{source}: invalid value for 'ablation.variants.{name}': backbone none needs inputs "
                              "backbone_and_observation or observation (its own or finetune.inputs): without the "
                              f"backbone the head has no input. Set finetune.inputs, or take {name} out of "
                              "'ablation.run'")
        own_unfreeze = variant.get("unfreeze")
        if variant["backbone"] == "none" and own_unfreeze not in (None, "none"):
            raise ParamsError(f"{source}: invalid value for 'ablation.variants.{name}': backbone none has no backbone "
                              f"to unfreeze (its unfreeze is {own_unfreeze!r}). Set its unfreeze: none or leave it "
                              f"out, or take {name} out of 'ablation.run'")
        unfreeze = variant_unfreeze(variant["backbone"], own_unfreeze, raw["finetune"]["unfreeze"])
        if variant["label_fraction"] < 1.0 and unfreeze != "none":
            raise ParamsError(f"{source}: invalid value for 'ablation.variants.{name}': label_fraction < 1 needs "
                              f"unfreeze none (it is {unfreeze!r}, its own or finetune.unfreeze): the label subsample "
                              f"is taken on the frozen backbone's feature cache")
    fr = raw["split"]["fractions"]
    total = fr["train"] + fr["val"] + fr["test"]
    if abs(total - 1.0) > 1e-6:
        raise ParamsError(f"{source}: invalid value for 'split.fractions': train + val + test = {total:g}, must be 1")
    le = raw["label_efficiency"]
    not_folds = [k for k in le["run"] if k not in raw["split"]["folds"]]
    if not_folds:
        raise ParamsError(f"{source}: invalid value for 'label_efficiency.run': fold(s) {not_folds} not in "
                          f"'split.folds' {raw['split']['folds']}")
    fractions = le["fractions"]
    if fractions != sorted(fractions):  # the schema checks (0, 1] and uniqueness
        raise ParamsError(f"{source}: invalid value for 'label_efficiency.fractions': {fractions} must be in "
                          "increasing order (the figure's x axis and the nested subsamples follow it)")
    if le["run"] and raw["finetune"]["unfreeze"] != "none":
        raise ParamsError(f"{source}: invalid value for 'label_efficiency.run': label efficiency measures the "
                          f"frozen backbone and needs 'finetune.unfreeze: none' (it is "
                          f"{raw['finetune']['unfreeze']!r}); the label subsample is taken on the frozen "
                          "backbone's feature cache")
    if le["run"] and raw["finetune"]["inputs"] == "observation":
        raise ParamsError(f"{source}: invalid value for 'label_efficiency.run': label efficiency compares "
                          "backbones (label_efficiency.backbones), but 'finetune.inputs: observation' uses none, "
                          "so every backbone would give the same run; use backbone or backbone_and_observation")


def params_from_dict(raw: dict[str, Any], root: str | Path = PROJECT_ROOT) -> Params:
    """Validate and type an in-memory params dict (tests, notebooks); relative paths in it resolve
    against `root` (default: the project checkout holding this package)."""
    validate(raw, source="<params dict>")
    check_cross_keys(raw, source="<params dict>")
    return _build(Params, raw, root=Path(root).resolve())


def resolve_path(value: str, key: str, root: Path) -> Path:
    """The path that params key `key` names. An absolute path is used as is. A relative path is taken
    from `root` (Params.root, the params file's folder) and must stay inside it once `..` and symlinks
    are resolved: params are versioned with the project (DVC, `dvc exp run -S`), and a relative path
    that quietly reads from outside it makes a run depend on files that nobody versions."""
    if not value:
        raise ParamsError(f"{key}: empty path")
    path = Path(value)
    if path.is_absolute():
        return path
    try:
        base = Path(root).resolve()
        resolved = (base / path).resolve()  # not strict: the path may not exist yet (a download target)
    except (RuntimeError, OSError) as e:  # a symlink loop: RuntimeError up to Python 3.12, OSError (ELOOP) after
        raise ParamsError(f"{key}: {value!r} cannot be resolved: a symbolic link loop ({e})") from None
    if not resolved.is_relative_to(base):
        raise ParamsError(
            f"{key}: {value!r} escapes the project directory {base} (it resolves to {resolved}); "
            "give an absolute path to use data outside it"
        )
    return resolved
