"""Typed params: `params.yaml` -> validated, frozen dataclasses; the one definition of every key.

The dataclasses below define each params.yaml key once: its type, range and description (pydantic's Field in
the annotation; pydantic itself reads them, see tests/test_params_schema.py), whether it is required (every
key without a default), and, in check_cross_keys / head_problem, the rules that tie keys together. The JSON
schema in `workflow/schemas/params.schema.json` is generated from them (`python -m seqsetvae.config
--write-schema`; a test fails when the committed file differs) and is what Snakemake's `validate()` and every
stage validate against, once, before any work. Any unknown key, wrong type or out-of-range value stops the
caller with a `ParamsError` naming the key. Two types are read more strictly than JSON Schema reads them: a
number is finite, and an integer is an int (not 20.0). The file itself must be UTF-8 YAML without a key given
twice in one mapping and with aliases bounded (`read_yaml`). The dataclasses are built from the validated
data as it is (no conversion: 48 stays an int in a float key), so to_dict() gives back the YAML content.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import jsonschema
import yaml
from pydantic import Field
from pydantic.fields import FieldInfo

from seqsetvae.errors import excerpt

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.json"


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message names the file and the key."""


# --------------------------------------------------------------------------------------------------
# The typed view of params.yaml: one frozen dataclass per section, and the one definition of every key. Each
# field's annotation holds its type and, in pydantic's Field, its range and description; a field without a
# default is a required key (no defaults on purpose: params.yaml is the only place a value is set; the few
# `= None` are optional keys, absent when None, never null in the file). The JSON schema is generated from these classes (`python -m seqsetvae.config --write-schema`, see params_schema).

Seed = Annotated[int, Field(ge=0, le=4294967295)]
Fraction = Annotated[float, Field(gt=0, le=1)]
NullablePath = Annotated[str | None, Field(min_length=1)]
VariantName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
NonEmptyStr = Annotated[str, Field(min_length=1)]
Fold = Annotated[int, Field(ge=0, le=999)]
NumThreads = Annotated[
    Literal["auto"] | Annotated[int, Field(ge=0, le=1024)],
    Field(description="CPU threads: auto (the cores the runner gave this job: Snakemake's {threads}, "
                      "SLURM_CPUS_PER_TASK, else every core), 0 (= auto) or a count"),
]  # seqsetvae/threads.py
HeadInputs = Literal["backbone", "backbone_and_observation", "observation"]
Unfreeze = Literal["none", "transformer", "all"]
# A float is a fraction of the epoch's batches, an int a number of batches (Lightning's convention).
LimitBatches = Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)]


def _unique(**more: Any) -> Any:
    """Field(...) for a list whose items are unique (JSON Schema's uniqueItems)."""
    return Field(json_schema_extra={"uniqueItems": True}, **more)


@dataclass(frozen=True)
class SyntheticParams:
    n_subjects: Annotated[int, Field(ge=10, le=10_000_000)]
    seed: Seed
    positive_rate: Annotated[float, Field(gt=0, lt=1)]


@dataclass(frozen=True)
class PhysioNet2012Params:
    dir: NonEmptyStr
    sets: Annotated[list[Literal["a", "b", "c"]], _unique(min_length=1)]
    download: bool
    url: NonEmptyStr


@dataclass(frozen=True)
class MedsParams:
    dir: NullablePath
    labels: NullablePath
    window_start_column: Annotated[str | None, Field(min_length=1, description=(
        "a timestamp column of the label files that gives each sample's window start (e.g. ICU admission for a "
        "first_24h task); null: windows look back preprocess.window_hours from the prediction time"))]


@dataclass(frozen=True)
class DataParams:
    source: Literal["synthetic", "physionet2012", "meds"]
    shards: Annotated[list[Annotated[int, Field(ge=0, le=99_999)]], _unique(min_length=1, description=(
        "the events shards, 0 .. n-1: shard k holds the subjects at positions [k*N//n, (k+1)*N//n) of the "
        "cohort's subject ids in ascending order; one ingest-to-pack job chain per shard (dvc.yaml foreach)"))]
    synthetic: SyntheticParams
    physionet2012: PhysioNet2012Params
    meds: MedsParams


@dataclass(frozen=True)
class Fractions:
    train: Fraction
    val: Fraction
    test: Fraction


@dataclass(frozen=True)
class SplitParams:
    protocol: Literal["random", "predefined", "physionet2012_set_a_test"]
    folds: Annotated[list[Fold], _unique(min_length=1)]
    fractions: Fractions
    seed: Seed
    predefined_csv: NullablePath
    unlisted: Annotated[Literal["refuse", "exclude"], Field(
        description="predefined protocol: a labelled subject the CSV does not list in a fold is an error (refuse) "
                    "or left out of that fold and counted in the split log (exclude)")]


@dataclass(frozen=True)
class PreprocessParams:
    window_hours: Annotated[float, Field(gt=0)]
    max_outside_window_share: Annotated[float, Field(ge=0, le=1, description=(
        "preprocess stops with an error when more than this share of a split's events lies outside every "
        "sample's window (a birth row or history before the stay is the usual cause); 1 accepts any share "
        "knowingly"))]
    normalisation: Literal["robust", "standard"]
    log_transform: Literal["auto", "none"] | Annotated[list[NonEmptyStr], _unique()]
    log_auto_min_skew: Annotated[float, Field(ge=0)]
    clip: Annotated[float, Field(gt=0)]
    duplicates: Literal["mean", "last", "keep"]
    min_code_count: Annotated[int, Field(ge=1)]
    descriptors: Annotated[Literal["admission_set", "none"], Field(
        description="admission_set: each sample's descriptors (numeric and text subjects columns, the age at the "
        "prediction time from birth_time) as one set at its window start, coded static/<name> | none")]


@dataclass(frozen=True)
class LoaderParams:
    batch_size: Annotated[int, Field(ge=1, le=65536)]
    bucket_size: Annotated[int, Field(ge=1)]
    max_sets: Annotated[int, Field(ge=0)]
    max_events_per_set: Annotated[int, Field(ge=0)]
    num_workers: Annotated[int, Field(ge=0, le=64)]
    seed: Seed


@dataclass(frozen=True)
class SetEncoderParams:
    n_isab: Annotated[int, Field(ge=1, le=16)]
    n_heads: Annotated[int, Field(ge=1, le=64)]
    n_inducing: Annotated[int, Field(ge=1, le=1024)]
    ff_dim: Annotated[int, Field(ge=1, le=16384)]


@dataclass(frozen=True)
class TransformerParams:
    n_layers: Annotated[int, Field(ge=1, le=48)]
    n_heads: Annotated[int, Field(ge=1, le=64)]
    ff_dim: Annotated[int, Field(ge=1, le=16384)]
    n_time_freqs: Annotated[int, Field(ge=1, le=256)]


@dataclass(frozen=True)
class ModelParams:
    d_model: Annotated[int, Field(ge=4, le=4096)]
    latent_dim: Annotated[int, Field(ge=1, le=4096)]
    value_hidden: Annotated[int, Field(ge=1, le=4096)]
    decoder_hidden: Annotated[int, Field(ge=1, le=16384)]
    decoder_time: Annotated[bool, Field(
        description="condition the set decoder on the time of the set it reconstructs")]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    set_encoder: SetEncoderParams
    transformer: TransformerParams


@dataclass(frozen=True)
class HorizonForecastParams:
    # C1: forecast each variable's mean value over (t, t + h] from h_t, for each h (models/objectives.py)
    weight: Annotated[float, Field(ge=0)]
    horizons_hours: Annotated[list[Annotated[float, Field(gt=0)]], _unique(min_length=1)]


@dataclass(frozen=True)
class SpanMaskParams:
    # C2: hide ~share of the (stay, variable) pairs over one span each, score the hidden values from context
    weight: Annotated[float, Field(ge=0)]
    share: Annotated[float, Field(gt=0, le=1)]
    span_hours: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=2, max_length=2)]  # [shortest, longest]


@dataclass(frozen=True)
class PretrainParams:
    seed: Seed
    max_epochs: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0, le=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip_norm: Annotated[float, Field(ge=0)]
    beta_max: Annotated[float, Field(ge=0, le=100)]
    kl_warmup_steps: Annotated[int | None, Field(ge=0, description=(
        "optimiser steps for beta to rise linearly from 0 to beta_max; null when kl_warmup_fraction is set"))]
    kl_warmup_fraction: Annotated[float | None, Field(ge=0, le=1, description=(
        "warm-up length as a share of the run's optimiser steps (max_epochs x train batches per epoch); null when "
        "kl_warmup_steps is set"))]
    free_bits: Annotated[float, Field(ge=0)]
    forecast_weight: Annotated[float, Field(ge=0)]
    active_unit_threshold: Annotated[float, Field(gt=0)]
    horizon_forecast: Annotated[HorizonForecastParams, Field(
        description="C1: forecast each variable's mean value over (t, t + h] from h_t (models/objectives.py)")]
    span_mask: Annotated[SpanMaskParams, Field(description=(
        "C2: hide about `share` of the (stay, variable) pairs over one span each and score the hidden values from "
        "context"))]
    gate_max_stays: Annotated[int, Field(ge=0, description=(
        "the residual probe (screening gate) fits and scores on at most this many stays per split, a seeded "
        "sample; 0 = every stay"))]
    gate_observation_codes: Annotated[int, Field(ge=0, description=(
        "the gate's observation state and the probe's per-variable read-back cover the K codes present in the most "
        "train stays (as finetune.observation_codes does for the head); 0 = every code"))]
    eval_max_stays: Annotated[int, Field(ge=0, description=(
        "the end-of-stage evaluation of best.ckpt (reconstruction, KL, active units, latent usage) runs on at most "
        "this many val and test stays each, a seeded sample; 0 = every stay"))]


@dataclass(frozen=True)
class PoolingParams:
    """At least one pooling is on: last, attention, or a window."""

    __json_schema_extra__: ClassVar[dict[str, Any]] = {"anyOf": [
        {"properties": {"last": {"const": True}}},
        {"properties": {"attention": {"const": True}}},
        {"properties": {"windows_hours": {"minItems": 1}}},
    ]}

    last: bool
    attention: bool
    windows_hours: Annotated[list[Annotated[float, Field(gt=0)]], _unique(max_length=16)]


@dataclass(frozen=True)
class FinetuneParams:
    seed: Seed
    max_epochs: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0, le=1)]
    backbone_lr: Annotated[float, Field(gt=0, le=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip_norm: Annotated[float, Field(ge=0)]
    fusion: Literal["mu_only", "simple_concat", "enhanced_concat"]
    pooling: PoolingParams
    head_hidden: Annotated[int, Field(ge=1, le=16384)]
    head_dropout: Annotated[float, Field(ge=0, lt=1)]
    backbone_projection: Annotated[int, Field(ge=0, le=4096)]
    imbalance: Literal["pos_weight", "focal", "none"]
    focal_gamma: Annotated[float, Field(ge=0, le=10)]
    aux_recon_weight: Annotated[float, Field(ge=0)]
    aux_kl_weight: Annotated[float, Field(ge=0)]
    unfreeze: Unfreeze
    inputs: Annotated[HeadInputs, Field(
        description="what the head sees: backbone features | backbone features and the per-variable observation "
                    "state | the observation state alone (no backbone: the control row)")]
    observation_codes: Annotated[int, Field(ge=0, le=1_000_000, description=(
        "codes the observation state covers: 0 = every code; K = the K codes present in the most train stays "
        "(bounds the state to 6 K values per stay)"))]
    calibration: Annotated[Literal["platt", "none"], Field(
        description="probability calibration fitted on val after training: platt (logistic on the logit) | none")]


@dataclass(frozen=True)
class LogRegParams:
    C: Annotated[list[Annotated[float, Field(gt=0)]], _unique(min_length=1)]
    max_iter: Annotated[int, Field(ge=1)]


@dataclass(frozen=True)
class GBMParams:
    learning_rate: Annotated[list[Annotated[float, Field(gt=0, le=1)]], _unique(min_length=1)]
    max_leaf_nodes: Annotated[list[Annotated[int, Field(ge=2)]], _unique(min_length=1)]
    l2_regularization: Annotated[list[Annotated[float, Field(ge=0)]], _unique(min_length=1)]
    max_iter: Annotated[int, Field(ge=1)]
    early_stopping: bool
    validation_fraction: Annotated[float, Field(gt=0, lt=1)]
    n_iter_no_change: Annotated[int, Field(ge=1)]


@dataclass(frozen=True)
class BaselineParams:
    seed: Seed
    num_threads: NumThreads
    categorical_descriptors: Annotated[list[NonEmptyStr], _unique()]
    logreg: LogRegParams
    gbm: GBMParams
    # Train samples the models are fitted on at most: a seeded, label-stratified sample of that many (by subject
    # hash, as the label subsample), since both models densify their training rows (8 B x rows x columns per
    # copy, 5 GiB at 84,000 train samples x 200 codes). None (null): every train sample.
    max_train_samples: Annotated[int | None, Field(ge=20)]
    # Codes the models see at most: the ones measured in the most training samples (both models densify
    # their training rows, about 8 B x train samples x 7 x max_codes per copy). Optional; None: every train code.
    max_codes: Annotated[int | None, Field(ge=1)] = None


@dataclass(frozen=True)
class EvaluateParams:
    n_bootstrap: Annotated[int, Field(
        ge=2, description="bootstrap resamples for the CIs: 1000 or more for reported results; a few for quick runs; "
                          "at least 2 (one resample gives an interval of zero width, which need not hold the point "
                          "estimate)")]
    seed: Seed
    ci: Annotated[float, Field(gt=0, lt=1)]
    calibration_bins: Annotated[int, Field(ge=2, le=100)]


def variant_unfreeze(backbone: str, own: str | None, inherited: str) -> str:
    """The one home of the rule: a variant's own unfreeze, else finetune.unfreeze, except that a variant with
    no backbone has nothing to unfreeze and never inherits it."""
    if own is not None:
        return own
    return "none" if backbone == "none" else inherited


def head_problem(backbone: str, label_fraction: float, inputs: str, own_unfreeze: str | None,
                 inherited_unfreeze: str) -> tuple[str, str | None] | None:
    """The one home of the rules that tie a finetune run's head to its backbone and its labels: None when the
    run is valid, else (the problem, starting with the variant key it is about; the fix, or None).
    check_cross_keys applies them to the variants in ablation.run when params are read; the finetune stage to
    the run it is asked for (a variant outside ablation.run, a label-efficiency point)."""
    if backbone == "none" and inputs == "backbone":
        return ("backbone none needs inputs backbone_and_observation or observation (its own or finetune.inputs): "
                "without the backbone the head has no input", "Set finetune.inputs")
    if backbone == "none" and own_unfreeze not in (None, "none"):
        return (f"backbone none has no backbone to unfreeze (its unfreeze is {own_unfreeze!r})",
                "Set its unfreeze: none or leave it out")
    unfreeze = variant_unfreeze(backbone, own_unfreeze, inherited_unfreeze)
    if label_fraction < 1.0 and unfreeze != "none":
        return (f"label_fraction < 1 needs unfreeze none (it is {unfreeze!r}, its own or finetune.unfreeze): the "
                "label subsample is taken on the frozen backbone's feature cache", None)
    return None


@dataclass(frozen=True)
class AblationVariant:
    backbone: Literal["pretrained", "random", "none"]
    label_fraction: Annotated[float, Field(gt=0, le=1)]
    # What the variant's head sees, where it differs from the finetune section's (None: the same). Lets one
    # pipeline run hold the seed's frozen protocol (the backbone alone, no bottleneck) beside the main model.
    inputs: Annotated[HeadInputs | None, Field(
        description="what this variant's head sees (absent: finetune.inputs)")] = None
    backbone_projection: Annotated[int | None, Field(
        ge=0, le=4096,
        description="this variant's finetune.backbone_projection (absent: the finetune section's)")] = None
    # Which backbone modules train with the head (None: finetune.unfreeze). `end_to_end` sets `all`, so the
    # end-to-end row runs beside the frozen ones in one pipeline run. A variant with backbone none has nothing
    # to unfreeze: it does not inherit finetune.unfreeze, so `-S finetune.unfreeze=all` keeps the no_backbone
    # control running (its own unfreeze other than none is refused by check_cross_keys).
    unfreeze: Annotated[Unfreeze | None, Field(
        description="this variant's finetune.unfreeze (absent: the finetune section's, or none for backbone none, "
                    "which has nothing to unfreeze); end_to_end sets all")] = None

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
    run: Annotated[list[VariantName], _unique()]
    seed: Seed
    variants: dict[VariantName, AblationVariant]

    def variant(self, name: str) -> AblationVariant:
        if name not in self.variants:
            raise ParamsError(f"ablation.variants: no variant {name!r} (defined: {', '.join(sorted(self.variants))})")
        return self.variants[name]


@dataclass(frozen=True)
class LabelEfficiencyParams:
    """Label efficiency (docs/benchmark.md): the head and the baselines on nested, seeded, label-stratified
    subsamples of the training split (seqsetvae.data.splits.label_subsample); val and test stay whole."""

    run: Annotated[list[Fold], _unique()]  # folds to run it on: a subset of split.folds ([]: none, the default)
    fractions: Annotated[list[Fraction], _unique(min_length=1)]  # shares of the training labels, increasing
    backbones: Annotated[list[Literal["pretrained", "random"]], _unique()]  # SeqSetVAE's frozen backbone
    baselines: Annotated[list[Literal["logreg", "gbm"]], _unique()]  # baseline models fitted on the same subsamples
    seed: Seed  # seed of the subsamples (the same subsample for every model at one fold and fraction)


TaskName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


@dataclass(frozen=True)
class TaskDefinition:
    """One prediction task as a label rule (seqsetvae/data/tasks.py, docs/preprocess.md "Tasks")."""

    label: Annotated[Literal["in_hospital_death", "length_of_stay_over"], Field(
        description="in_hospital_death: the stay's in-hospital death (the source's main label); "
                    "length_of_stay_over: Length_of_stay above length_of_stay_days (PhysioNet 2012 Outcomes)")]
    prediction_hours: Annotated[float, Field(
        gt=0, le=8760, description="prediction time = admission + this many hours; the window ends there")]
    length_of_stay_days: Annotated[float | None, Field(
        gt=0, description="length_of_stay_over: the label is Length_of_stay > this many days; null otherwise")]
    in_unit_at_prediction: Annotated[bool, Field(
        description="keep only stays still in the unit at the prediction time (PhysioNet 2012 Outcomes: "
                    "Length_of_stay and Survival known and beyond it); the others are counted by reason")]


@dataclass(frozen=True)
class TasksParams:
    """Several tasks from one pretraining (issue 29 D): the backbone is pretrained once per fold on the main
    task's data; each task in `run` gets its own label table, packed with the main task's vocabulary and
    statistics, and the same rows (finetune, ablation variants, baselines, evaluate)."""

    main: Annotated[TaskName, Field(
        description="name of the task ingest's labels.parquet holds (its outputs keep their paths)")]
    run: Annotated[list[TaskName], _unique()]  # extra tasks (names from `definitions`); []: the main task alone
    definitions: dict[TaskName, TaskDefinition]

    def task(self, name: str) -> TaskDefinition:
        if name not in self.definitions:
            raise ParamsError(f"tasks.definitions: no task {name!r} (defined: {', '.join(sorted(self.definitions))})")
        return self.definitions[name]


@dataclass(frozen=True)
class ReportParams:
    dpi: Annotated[int, Field(ge=30, le=600)]


@dataclass(frozen=True)
class TrainerParams:
    accelerator: Literal["auto", "cpu", "gpu", "mps"]
    # A count per node, or device ids; passed to Lightning unchanged.
    devices: Annotated[int, Field(ge=1)] | Annotated[list[Annotated[int, Field(ge=0)]], _unique(min_length=1)]
    num_nodes: Annotated[int, Field(ge=1)]
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true"]
    precision: Literal["32-true", "16-mixed", "bf16-mixed"]
    deterministic: Literal[True, False, "warn"]
    num_threads: NumThreads
    early_stopping_patience: Annotated[int, Field(ge=0)]
    limit_train_batches: LimitBatches
    limit_val_batches: LimitBatches
    log_every_n_steps: Annotated[int, Field(ge=1)]
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
    label_efficiency: Annotated[LabelEfficiencyParams, Field(
        description="Label efficiency: the frozen head (pretrained and random backbones) and the baselines on "
                    "nested, seeded, label-stratified subsamples of the training split, on the folds in run "
                    "(docs/benchmark.md). Cross-key rules (run within split.folds, fractions increasing, "
                    "finetune.unfreeze none) are checked in seqsetvae/config.py.")]
    report: ReportParams
    tasks: Annotated[TasksParams, Field(
        description="Extra prediction tasks finetuned from the same pretrained backbone (docs/preprocess.md "
                    "\"Tasks\"). run: [] (the default) runs the main task alone, exactly as before.")]
    # Not a params.yaml key (never validated or serialised): the folder that relative paths in params
    # resolve against, i.e. the folder of the params file (see resolve_path).
    root: Path = dataclasses.field(kw_only=True, metadata={"yaml": False})

    def to_dict(self) -> dict[str, Any]:
        """The params.yaml content (without `root`, which depends on where the file was read from)."""
        return {f.name: _plain(getattr(self, f.name)) for f in _yaml_fields(Params)}


# --------------------------------------------------------------------------------------------------
# The JSON schema, generated from the dataclasses above: workflow/schemas/params.schema.json is this
# function's output, committed (Snakemake's validate() reads it, and so does validate() below);
# tests/test_params_schema.py fails when the file differs from what the dataclasses give.

SCHEMA_HEADER = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "SeqSetVAE params.yaml",
    "description": "Every stage validates params.yaml against this schema before any work; Snakemake validates it "
                   "too. Unknown keys are errors. The stages read two types more strictly than JSON Schema "
                   "(seqsetvae/config.py): a number is finite (.nan, .inf are refused) and an integer is an int "
                   "(20.0 is refused). Generated from seqsetvae/config.py (python -m seqsetvae.config "
                   "--write-schema): edit the dataclasses there, not this file.",
}
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}
# pydantic's Field constraints (annotated_types) -> JSON Schema keywords, for a number / a string / an array
_BOUNDS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
_LENGTHS = {"min_length": ("minLength", "minItems"), "max_length": ("maxLength", "maxItems")}


def params_schema() -> dict[str, Any]:
    """The JSON schema of params.yaml, from the Params dataclass (the generated file's content)."""
    body = _object_schema(Params)
    return {**SCHEMA_HEADER, **body}


def _object_schema(cls: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = _yaml_fields(cls)
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in fields if f.default is dataclasses.MISSING],
        "properties": {f.name: _type_schema(hints[f.name], optional=f.default is None) for f in fields},
        **cls.__dict__.get("__json_schema_extra__", {}),
    }


def _type_schema(tp: Any, optional: bool = False) -> dict[str, Any]:
    """The schema of one annotation. `optional`: a key that may be left out (default None), which is not
    null when given."""
    infos: list[Any] = []
    if typing.get_origin(tp) is Annotated:
        tp, *infos = typing.get_args(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and optional:
        args = tuple(a for a in args if a is not type(None))
        tp = args[0] if len(args) == 1 else typing.Union[args]  # noqa: UP007
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if typing.get_origin(tp) is Annotated:  # e.g. an optional key's Annotated member
        inner = _type_schema(tp)
        return _with_field_infos(inner, infos, array=inner.get("type") == "array")
    if dataclasses.is_dataclass(tp):
        schema = _object_schema(tp)
    elif origin is Literal:
        schema = {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
    elif origin in (typing.Union, types.UnionType):
        plain = [a for a in args if a in _JSON_TYPES]
        if len(plain) == len(args):  # e.g. str | None: one schema of several types
            schema = {"type": [_JSON_TYPES[a] for a in args]}
        else:
            schema = {"oneOf": [_type_schema(a) for a in args]}
            if any(_base(a) is int for a in args):  # 1 is a number too: a float member refuses integers
                schema["oneOf"] = [{**s, "not": {"type": "integer"}} if _base(a) is float else s
                                   for a, s in zip(args, schema["oneOf"])]
    elif origin is list:
        schema = {"type": "array", "items": _type_schema(args[0])}
    elif origin is dict:
        keys = _type_schema(args[0])
        schema = {"type": "object", **({"propertyNames": keys} if keys != {"type": "string"} else {}),
                  "additionalProperties": _type_schema(args[1])}
    elif tp in _JSON_TYPES:
        schema = {"type": _JSON_TYPES[tp]}
    else:
        raise TypeError(f"no JSON schema for the params type {tp!r}")
    return _with_field_infos(schema, infos, array=schema.get("type") == "array")


def _base(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _with_field_infos(schema: dict[str, Any], infos: list[Any], array: bool) -> dict[str, Any]:
    """`schema` with the description (first), constraints and extra keywords of pydantic Field()s."""
    description, constraints = None, {}
    for info in infos:
        if not isinstance(info, FieldInfo):
            raise TypeError(f"params annotations take pydantic Field(...), not {info!r}")
        description = info.description or description
        for item in info.metadata:
            for attr, keyword in _BOUNDS.items():
                if getattr(item, attr, None) is not None:
                    constraints[keyword] = getattr(item, attr)
            for attr, (for_str, for_array) in _LENGTHS.items():
                if getattr(item, attr, None) is not None:
                    constraints[for_array if array else for_str] = getattr(item, attr)
            if getattr(item, "pattern", None) is not None:
                constraints["pattern"] = item.pattern
        constraints.update(info.json_schema_extra or {})
    return {**({"description": description} if description else {}), **schema, **constraints}


def write_schema(path: Path | None = None) -> str:
    """Write the generated schema to `path` (default SCHEMA_PATH); returns its text."""
    text = schema_text()
    Path(path or SCHEMA_PATH).write_text(text, encoding="utf-8")
    return text


def schema_text() -> str:
    return json.dumps(params_schema(), indent=2, ensure_ascii=False) + "\n"


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


MAX_MESSAGE_CHARS = 300  # a schema message longer than this quotes the offending value as an excerpt


def kind_of(value: Any) -> str:
    """A bounded description of a YAML value, for an error message that must not quote it whole."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, str):
        return f"the text {excerpt(value)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"a mapping of {len(value)} key(s)"
    return excerpt(repr(value))


def _describe(err: jsonschema.ValidationError) -> str:
    """The validator's message, plainer for the two number rules above, and bounded: a long value (a 5 MiB
    string) is quoted as an excerpt."""
    value, types = err.instance, err.validator_value
    if err.validator == "type" and isinstance(value, float):
        types = [types] if isinstance(types, str) else list(types)
        if not math.isfinite(value):
            return f"{value} is not a finite number"
        if "integer" in types:
            return f"{value!r} is not an integer (write it without a decimal point)"
    message = err.message
    if len(message) > MAX_MESSAGE_CHARS:
        whole = repr(value)
        message = message.replace(whole, kind_of(value)) if whole in message else message[:MAX_MESSAGE_CHARS] + "..."
    return message


def validate(raw: Any, source: str = "params.yaml") -> None:
    """Raise ParamsError naming the first offending key (the most specific error first)."""
    validator = _Validator(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: (-len(e.absolute_path), e.path))
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors) if len(errors) > 1 else errors[0]
    key = _key_of(err)
    if len(key) > 120:  # a key is quoted whole only when it is short: an unknown 5 MiB key is cut
        key = f"{key[:80]}... ({len(key)} characters)"
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
                        None, None, f"duplicate key {excerpt(str(key), 80)} at {where} (keep one)", b
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
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: not a params file: the top level must be a mapping of sections (data:, split:, "
                          f"...), found {kind_of(raw)}")
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
        problem = head_problem(variant["backbone"], variant["label_fraction"],
                               variant.get("inputs", raw["finetune"]["inputs"]), variant.get("unfreeze"),
                               raw["finetune"]["unfreeze"])
        if problem is not None:
            what, fix = problem
            fix = f". {fix}, or take {name} out of 'ablation.run'" if fix else ""
            raise ParamsError(f"{source}: invalid value for 'ablation.variants.{name}': {what}{fix}")
    pt = raw["pretrain"]
    if (pt["kl_warmup_steps"] is None) == (pt["kl_warmup_fraction"] is None):
        raise ParamsError(f"{source}: invalid value for 'pretrain.kl_warmup_fraction': exactly one of "
                          "'pretrain.kl_warmup_steps' (optimiser steps) and 'pretrain.kl_warmup_fraction' (share of "
                          f"the run's steps) must be set, the other null (they are {pt['kl_warmup_steps']!r} and "
                          f"{pt['kl_warmup_fraction']!r})")
    fr = raw["split"]["fractions"]
    total = fr["train"] + fr["val"] + fr["test"]
    if abs(total - 1.0) > 1e-6:
        raise ParamsError(f"{source}: invalid value for 'split.fractions': train + val + test = {total:g}, must be 1")
    shards = raw["data"]["shards"]
    if sorted(shards) != list(range(len(shards))):
        raise ParamsError(f"{source}: invalid value for 'data.shards': {shards} must be the shard indices 0 .. n-1 "
                          f"(e.g. {list(range(len(shards)))}), one per events shard")
    tasks = raw["tasks"]
    undefined = [t for t in tasks["run"] if t not in tasks["definitions"]]
    if undefined:
        raise ParamsError(f"{source}: invalid value for 'tasks.run': {undefined} not defined in 'tasks.definitions'")
    if tasks["main"] in tasks["run"]:
        raise ParamsError(f"{source}: invalid value for 'tasks.run': {tasks['main']!r} is 'tasks.main', the task "
                          "ingest's labels.parquet holds; it always runs (outputs at the main paths)")
    for name in tasks["run"]:
        d = tasks["definitions"][name]
        if (d["label"] == "length_of_stay_over") != (d["length_of_stay_days"] is not None):
            raise ParamsError(f"{source}: invalid value for 'tasks.definitions.{name}.length_of_stay_days': set it "
                              "(days) for label length_of_stay_over and only then (null otherwise)")
        needs_outcomes = d["label"] == "length_of_stay_over" or d["in_unit_at_prediction"]
        if raw["data"]["source"] == "meds" or (needs_outcomes and raw["data"]["source"] != "physionet2012"):
            what = ("length of stay and death times (PhysioNet 2012 Outcomes files)" if needs_outcomes
                    else "the source's in-hospital death labels (physionet2012, synthetic)")
            raise ParamsError(f"{source}: invalid value for 'tasks.run': task {name!r} needs {what}, which "
                              f"data.source {raw['data']['source']!r} does not give; a MEDS cohort brings its "
                              "tasks as label tables (data.meds.labels)")
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


def main(argv: list[str] | None = None) -> int:
    """`python -m seqsetvae.config --write-schema` regenerates workflow/schemas/params.schema.json from the
    dataclasses; `--check` exits 1 when the committed file differs from them."""
    parser = argparse.ArgumentParser(prog="python -m seqsetvae.config", description=main.__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write-schema", action="store_true", help="write workflow/schemas/params.schema.json")
    action.add_argument("--check", action="store_true", help="exit 1 if the committed schema is not the generated one")
    args = parser.parse_args(argv)
    if args.write_schema:
        write_schema()
        print(f"wrote {SCHEMA_PATH}")
        return 0
    if SCHEMA_PATH.read_text(encoding="utf-8") != schema_text():
        print(f"{SCHEMA_PATH} differs from seqsetvae/config.py: run python -m seqsetvae.config --write-schema",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
