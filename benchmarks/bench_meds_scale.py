"""Every stage on ETL-shaped MEDS cohorts of N subjects: peak RSS and wall per stage, and how wall scales with N.

    python benchmarks/bench_meds_scale.py [--subjects 30000 100000 300000] [--events-per-subject 1000]
                                          [--codes 3000] [--seed 0] [--work DIR] [--keep]
                                          [--rss-limit-gib 10] [--stage-timeout 3600] [--json FILE]
                                          [--descriptors none|admission_set] [--stages ...]
    python benchmarks/bench_meds_scale.py --write-only DIR --subjects 2000   # just write a cohort
    python benchmarks/bench_meds_scale.py ... --ingest-jobs   # ingest as its shard jobs and merge, as DVC runs it
    python benchmarks/bench_meds_scale.py --cohort WORK --subjects 300000 --stages preprocess_jobs preprocess
                                          # reuse an earlier run's (--work WORK --keep) cohort, ingest, split

**The cohort** (`write_cohort`) is written the way MEDS ETLs (MIMIC-IV-MEDS) write theirs, streamed shard by
shard and, inside a shard, chunk by chunk (one parquet row group per `CHUNK_SUBJECTS` subjects), so this script
never holds more than one chunk (about 2,000 subjects' rows) in memory:

- `data/<k>.parquet`, shards of `--shard-subjects` (50,000) subjects; subject ids are a seeded permutation
  spread over the shards (ETLs hash subjects into shards), sorted inside a shard; per subject its rows are
  contiguous, sorted by time with the null-time static rows first (as MEDS sorts), then `MEDS_BIRTH` as the
  first timed row, then the history: 1-4 earlier admissions (a `HOSPITAL_ADMISSION` row and events over 3
  days each, 30 days to 10 years before the stay), then the stay (`HOSPITAL_ADMISSION` and events at whole
  hours over `24 * (n_pred + 1)` hours);
- static rows without a value: `GENDER//F|M`, `RACE//<one of 5>`;
- a Zipf-like code mix (`p(rank r) ~ 1/(r+1)^1.1`) over `--codes` codes: lab-like codes (`LAB//<i>//UNIT`,
  every one of the 50 most frequent and 40 % of the rest) carry a float32 value (a log-normal per code),
  diagnosis-like codes (`DIAGNOSIS//ICD//<i>`) are presence-only (null value);
- `labels/<k>.parquet`: an ACES-style label folder (subject_id, prediction_time, boolean_value), one row per
  sample, 2-5 prediction times per subject at stay + 24 h, + 48 h, ... (positive rate 15 %);
- about `--events-per-subject` events per subject (uniform in 0.5-1.5 times it), `--history-share` of them
  (default 0.55) before the stay; `--events-per-subject` scales a cohort down (1,000 gives ~300 M events at
  300,000 subjects, as MIMIC-IV-MEDS).

Deterministic: the same arguments give the same bytes (a numpy Generator per (seed, shard, chunk)).

**The stages** each run as their own `python -m seqsetvae` process, as DVC / Snakemake run them (ingest with
`--ingest-jobs`: each shard job and the merge in turn, each its own process, the largest job's peak RSS and the
sum of the walls reported; without it, `seqsetvae ingest`, every job in one process): ingest,
split, preprocess (its `all` step: every job in one process), baseline, pretrain, finetune, evaluate (fold
0); `preprocess_jobs` (not run unless named) runs preprocess as the runners do, each job its own process one
after another (scan per shard, fit, pack per shard, assemble, into `preprocess_jobs/`), and gives per kind of
job the number of jobs, the summed wall and the largest peak RSS. With a tiny model and a fixed number of
training steps (`trainer.limit_train_batches` 5, `limit_val_batches` 2, one epoch each): the point is memory
and per-step time, not a model. Pretrain evaluates best.ckpt and fits its gate on seeded samples of
`EVAL_STAYS` (2,000) stays (`pretrain.eval_max_stays`, `gate_max_stays`; the defaults, 20,000, would make
that part of the stage as long as 20,000 stays take at every size above about 200,000 samples, and not fit
this run's time). The baselines keep the `BASELINE_MAX_CODES` (200) codes measured in the most train samples
(`baseline.max_codes`, as docs/baselines.md asks of a cohort with thousands of codes) and fit on a sample of
`BASELINE_MAX_TRAIN` (20,000) train samples (`baseline.max_train_samples`): both models densify their training
rows. Gradient boosting keeps its early stopping (`GBM_EARLY_STOPPING`; run 3 of docs/scaling.md ran without,
before `baselines._HistGradientBoosting` fitted past a rare column whose train values all fall in the
early-stopping part).
`preprocess.max_outside_window_share` is set to 1, as a user with history
must set it: the history before the stay lies outside every sample's window by design, more than half the
events here, which the default 0.5 refuses. Wall, CPU time (user + system: less sensitive than the wall to a loaded host) and
peak RSS are measured per stage (the child's own `ru_maxrss` from wait4, and the whole process tree sampled from /proc every 0.5 s). A stage that exceeds
`--rss-limit-gib` (tree RSS) or runs past `--stage-timeout` is killed (the box is shared: an OOM would take other
work with it) and, like one that fails, recorded with its exit code and peak RSS; stages that need its output are
then not run, except finetune after a pretrain killed once fit had written and checksummed best.ckpt (pretrain's
end-of-stage evaluation of whole splits comes after it): finetune then runs on that checkpoint, and says so.
For pretrain and finetune the time at which best.ckpt was written (the end of fit) is also given. Wall
ratios compare each size with the smallest size of the same run. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_scale import _tree_rss  # noqa: E402  (the existing scale benchmark's measuring helper)

CHUNK_SUBJECTS = 2000
EVAL_STAYS = 2000  # pretrain.eval_max_stays and gate_max_stays of the benchmark's params
BASELINE_MAX_CODES = 200  # baseline.max_codes of the benchmark's params
BASELINE_MAX_TRAIN = 20000  # baseline.max_train_samples of the benchmark's params
GBM_EARLY_STOPPING = True  # baseline.gbm.early_stopping of the benchmark's params (False for run 3, docs/scaling.md)
US_HOUR = 3_600 * 10**6
US_DAY = 24 * US_HOUR
US_YEAR = 365 * US_DAY
EPOCH_2110 = (2110 - 1970) * US_YEAR  # MIMIC-IV shifts dates into the 22nd century
RACES = ("WHITE", "BLACK", "ASIAN", "HISPANIC", "OTHER")
DATA_SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                         ("numeric_value", pa.float32())])  # fmt: skip
LABEL_SCHEMA = pa.schema([("subject_id", pa.int64()), ("prediction_time", pa.timestamp("us")),
                          ("boolean_value", pa.bool_())])  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The cohort


class CodeBook:
    """The code strings (Zipf-ranked event codes, then the special ones), each code's frequency and value law."""

    def __init__(self, n_codes: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 0xC0DE])
        rank = np.arange(n_codes)
        self.n = n_codes
        self.cdf = np.cumsum(1.0 / (rank + 1.0) ** 1.1)
        self.cdf /= self.cdf[-1]
        self.is_lab = (rank < 50) | (rng.random(n_codes) < 0.4)
        self.loc = np.exp(rng.normal(3.0, 1.5, n_codes))  # log-normal value per lab-like code
        units = np.array(["mg/dL", "mmol/L", "U/L", "%", "bpm"])[rng.integers(0, 5, n_codes)]
        names = [f"LAB//{i}//{u}" if lab else f"DIAGNOSIS//ICD//{i}" for i, (lab, u) in enumerate(zip(self.is_lab, units))]
        special = ["MEDS_BIRTH", "HOSPITAL_ADMISSION", "GENDER//F", "GENDER//M", *(f"RACE//{r}" for r in RACES)]
        self.strings = pa.array(names + special, pa.string())
        self.BIRTH, self.ADMISSION, self.GENDER, self.RACE = n_codes, n_codes + 1, n_codes + 2, n_codes + 4


def _chunk(book: CodeBook, ids: np.ndarray, events: int, history_share: float, rng: np.random.Generator) -> tuple[pa.Table, pa.Table]:
    """(data rows, label rows) of the subjects `ids`, MEDS-sorted."""
    b = len(ids)
    n_pred = rng.integers(2, 6, b)
    stay = EPOCH_2110 + rng.integers(0, 80 * US_YEAR // US_HOUR, b) * US_HOUR
    stay_hours = 24 * (n_pred + 1)
    birth = stay - rng.integers(18 * 365, 90 * 365, b) * US_DAY
    n_adm = rng.integers(1, 5, b)
    adm = stay[:, None] - rng.integers(30 * US_DAY // US_HOUR, 10 * US_YEAR // US_HOUR, (b, 4)) * US_HOUR
    n_ev = np.maximum((events * rng.uniform(0.5, 1.5, b)).astype(np.int64), 2)
    n_hist = np.round(n_ev * history_share).astype(np.int64)
    n_stay = n_ev - n_hist

    s_stay = np.repeat(np.arange(b), n_stay)
    t_stay = stay[s_stay] + (rng.random(len(s_stay)) * stay_hours[s_stay]).astype(np.int64) * US_HOUR
    s_hist = np.repeat(np.arange(b), n_hist)
    which = (rng.random(len(s_hist)) * n_adm[s_hist]).astype(np.int64)
    t_hist = adm[s_hist, which] + rng.integers(0, 72, len(s_hist)) * US_HOUR
    s_ev = np.concatenate([s_hist, s_stay])
    t_ev = np.concatenate([t_hist, t_stay])
    c_ev = np.searchsorted(book.cdf, rng.random(len(s_ev)), side="right").clip(max=book.n - 1)
    lab = book.is_lab[c_ev]
    v_ev = np.where(lab, book.loc[c_ev] * np.exp(0.3 * rng.standard_normal(len(s_ev))), np.nan).astype(np.float32)

    adm_mask = np.arange(4)[None, :] < n_adm[:, None]
    s_adm = np.concatenate([np.nonzero(adm_mask)[0], np.arange(b)])
    t_adm = np.concatenate([adm[adm_mask], stay])
    null_t = np.iinfo(np.int64).min  # static rows: null time, sorted first
    subj = np.concatenate([np.arange(b), np.arange(b), np.arange(b), s_adm, s_ev])
    t = np.concatenate([np.full(b, null_t), np.full(b, null_t), birth, t_adm, t_ev])
    code = np.concatenate([book.GENDER + rng.integers(0, 2, b), book.RACE + rng.integers(0, len(RACES), b),
                           np.full(b, book.BIRTH), np.full(len(s_adm), book.ADMISSION), c_ev])  # fmt: skip
    value = np.concatenate([np.full(3 * b + len(s_adm), np.nan, np.float32), v_ev])
    order = np.lexsort((code, t, subj))
    subj, t, code, value = subj[order], t[order], code[order], value[order]
    data = pa.table([pa.array(ids[subj]), pa.array(t, pa.timestamp("us"), mask=t == null_t),
                     book.strings.take(pa.array(code)), pa.array(value, pa.float32(), mask=np.isnan(value))],
                    schema=DATA_SCHEMA)  # fmt: skip

    s_lab = np.repeat(np.arange(b), n_pred)
    k = np.arange(len(s_lab)) - np.repeat(np.cumsum(n_pred) - n_pred, n_pred) + 1  # 1..n_pred per subject
    labels = pa.table([pa.array(ids[s_lab]), pa.array(stay[s_lab] + k * US_DAY, pa.timestamp("us")),
                       pa.array(rng.random(len(s_lab)) < 0.15)], schema=LABEL_SCHEMA)  # fmt: skip
    return data, labels


def write_cohort(out: Path, subjects: int, events: int = 1000, codes: int = 3000, seed: int = 0,
                 shard_subjects: int = 50_000, history_share: float = 0.55) -> dict[str, int]:  # fmt: skip
    """Write an ETL-shaped MEDS cohort to `out` (data/, labels/, metadata/dataset.json); returns row counts."""
    book = CodeBook(codes, seed)
    ids = 10_000_000 + np.random.default_rng([seed, 0x1D]).permutation(subjects).astype(np.int64)
    (out / "data").mkdir(parents=True)
    (out / "labels").mkdir()
    (out / "metadata").mkdir()
    rows = samples = 0
    for k, start in enumerate(range(0, subjects, shard_subjects)):
        shard_ids = np.sort(ids[start : start + shard_subjects])
        with pq.ParquetWriter(out / "data" / f"{k}.parquet", DATA_SCHEMA, compression="zstd") as dw, \
                pq.ParquetWriter(out / "labels" / f"{k}.parquet", LABEL_SCHEMA, compression="zstd") as lw:  # fmt: skip
            for c, cs in enumerate(range(0, len(shard_ids), CHUNK_SUBJECTS)):
                rng = np.random.default_rng([seed, k, c])
                data, labels = _chunk(book, shard_ids[cs : cs + CHUNK_SUBJECTS], events, history_share, rng)
                dw.write_table(data)
                lw.write_table(labels)
                rows += data.num_rows
                samples += labels.num_rows
    (out / "metadata" / "dataset.json").write_text(json.dumps(
        {"dataset_name": f"bench_meds_scale_{subjects}", "etl_name": "benchmarks/bench_meds_scale.py",
         "etl_version": "0", "meds_version": "0.4.1"}) + "\n")  # fmt: skip
    return {"subjects": subjects, "rows": rows, "samples": samples, "shards": k + 1}


# --------------------------------------------------------------------------------------------------
# The stages


def run_stage(cmd: list[str], env: dict[str, str], rss_limit_gib: float, timeout_s: float) -> dict:
    """Run one stage; its exit code, wall, the child's ru_maxrss and the sampled tree peak (GiB), never raises.
    Over the RSS limit or the timeout, its process group is killed (SIGKILL) and that is recorded."""
    t, started = time.perf_counter(), time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    state = {"tree_gib": 0.0, "killed": None}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            rss = _tree_rss(proc.pid) / 2**30
            state["tree_gib"] = max(state["tree_gib"], rss)
            why = f"tree RSS {rss:.2f} GiB over the {rss_limit_gib} GiB limit" if rss > rss_limit_gib else (
                f"over the {timeout_s:.0f} s timeout" if time.perf_counter() - t > timeout_s else None)
            if why and state["killed"] is None:
                state["killed"] = why
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    rc = os.waitstatus_to_exitcode(status)
    text = out.decode("utf-8", "replace")
    return {"rc": rc, "wall_s": time.perf_counter() - t, "started": started, "rss_gib": usage.ru_maxrss / 2**20,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "tree_gib": max(state["tree_gib"], usage.ru_maxrss / 2**20), "killed": state["killed"],
            "tail": "" if rc == 0 else text[-2500:]}  # fmt: skip


def n_shards(subjects: int) -> int:
    """data.shards: about 2,000 labelled subjects a shard, what an ingest or preprocess job holds in memory."""
    return max(1, -(-subjects // 2000))


def run_ingest_jobs(ingest: list[str], params: list[str], out: str, parts: str, n: int, env: dict[str, str],
                    args: argparse.Namespace) -> dict:  # fmt: skip
    """Ingest as DVC runs it: each shard job (`ingest shard --shard k`), then the merge, each its own process,
    one after another. Figures: the walls summed, the peak RSS the largest job's; each job's printed."""
    jobs = [(f"shard {k}", [*ingest, "shard", *params, "--shard", str(k), "--out", out, "--parts", parts])
            for k in range(n)] + [("merge", [*ingest, "merge", *params, "--out", out, "--parts", parts])]
    total = {"rc": 0, "wall_s": 0.0, "rss_gib": 0.0, "tree_gib": 0.0, "killed": None, "tail": "", "jobs": {}}
    for label, cmd in jobs:
        r = run_stage(cmd, env, args.rss_limit_gib, args.stage_timeout)
        print(f"    ingest {label:9s} {r['wall_s']:7.1f} s  peak RSS {r['rss_gib']:6.2f} GiB", flush=True)
        total["jobs"][label] = {k: r[k] for k in ("rc", "wall_s", "rss_gib", "tree_gib")}
        total["wall_s"] += r["wall_s"]
        total["rss_gib"], total["tree_gib"] = max(total["rss_gib"], r["rss_gib"]), max(total["tree_gib"], r["tree_gib"])
        if r["rc"] != 0:
            total.update(rc=r["rc"], killed=r["killed"], tail=r["tail"])
            break
    return total


def stage_params(meds: Path, path: Path, train_batches: int, subjects: int, descriptors: str = "none") -> None:
    import yaml

    from seqsetvae.config import deep_merge, read_yaml

    params = deep_merge(read_yaml(ROOT / "params.yaml"), {
        "data": {"source": "meds", "meds": {"dir": str(meds), "labels": str(meds / "labels")},
                 "shards": list(range(n_shards(subjects)))},
        "split": {"folds": [0]},
        # history before the stay lies outside every window by design: accepted knowingly
        "preprocess": {"max_outside_window_share": 1.0, "descriptors": descriptors},
        "model": {"d_model": 16, "latent_dim": 8, "value_hidden": 8, "decoder_hidden": 16,
                  "set_encoder": {"n_isab": 1, "n_heads": 2, "n_inducing": 4, "ff_dim": 16},
                  "transformer": {"n_layers": 1, "n_heads": 2, "ff_dim": 16, "n_time_freqs": 2}},
        # the end-of-stage evaluation and the gate on a fixed-size seeded sample: their time is bounded, not linear
        "pretrain": {"max_epochs": 1, "eval_max_stays": EVAL_STAYS, "gate_max_stays": EVAL_STAYS},
        "finetune": {"max_epochs": 1},
        "trainer": {"accelerator": "cpu", "limit_train_batches": train_batches, "limit_val_batches": 2,
                    "progress_bar": False, "early_stopping_patience": 0},
        "evaluate": {"n_bootstrap": 20},
        # max_codes, max_train_samples: the models fit on dense train rows, 7 columns a code (docs/baselines.md)
        "baseline": {"max_codes": BASELINE_MAX_CODES, "max_train_samples": BASELINE_MAX_TRAIN,
                     "logreg": {"C": [0.1]}, "gbm": {"learning_rate": [0.1], "max_leaf_nodes": [7],
                                                     "l2_regularization": [0.0], "max_iter": 50,
                                                     # off for run 3 of docs/scaling.md, before baselines.py
                                                     # handled rare columns under early stopping
                                                     "early_stopping": GBM_EARLY_STOPPING}},
    })  # fmt: skip
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


STAGES = ("ingest", "split", "preprocess", "preprocess_jobs", "baseline", "pretrain", "finetune", "evaluate")
NEEDS = {"split": ["ingest"], "preprocess": ["split"], "preprocess_jobs": ["split"], "baseline": ["split"],
         "pretrain": ["preprocess"], "finetune": ["pretrain"], "evaluate": ["finetune"]}  # fmt: skip
JOB_KINDS = ("scan", "fit", "pack", "assemble")


def run_preprocess_jobs(py: list[str], p: list[str], ing: str, spl: str, out: Path, n_shards: int,
                        folds: list[int], env: dict[str, str], args: argparse.Namespace) -> dict:  # fmt: skip
    """The preprocess jobs one after another, each its own process as the runners start them (dvc.yaml's
    preprocess_scan@k, preprocess_fit@f, preprocess_pack@k, preprocess): per kind the number of jobs, the
    summed wall and the largest peak RSS (and which job). Stops at the first job that fails."""
    scans, fits, packs = out / "scan", out / "fit", out / "pack"
    jobs = [("scan", k, ["scan", "--ingested", ing, "--shard", str(k), "--out", str(scans / f"shard_{k}")])
            for k in range(n_shards)]
    jobs += [("fit", f, ["fit", "--scans", str(scans), "--fold", str(f), "--out", str(fits / f"fold_{f}")])
             for f in folds]
    jobs += [("pack", k, ["pack", "--ingested", ing, "--shard", str(k), "--fits", str(fits), "--out",
                          str(packs / f"shard_{k}")]) for k in range(n_shards)]  # fmt: skip
    jobs.append(("assemble", 0, ["assemble", "--fits", str(fits), "--packs", str(packs), "--out", str(out / "processed")]))
    kinds = {k: {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0, "rss_gib": 0.0, "tree_gib": 0.0, "largest": None} for k in JOB_KINDS}
    total = {"rc": 0, "wall_s": 0.0, "cpu_s": 0.0, "rss_gib": 0.0, "tree_gib": 0.0, "killed": None, "tail": "",
             "jobs": kinds}
    for kind, index, argv in jobs:
        r = run_stage([*py, "preprocess", *argv, *p, "--splits", spl], env, args.rss_limit_gib, args.stage_timeout)
        fig = kinds[kind]
        fig["jobs"] += 1
        fig["wall_s"] += r["wall_s"]
        fig["cpu_s"] += r["cpu_s"]
        total["cpu_s"] += r["cpu_s"]
        if r["rss_gib"] > fig["rss_gib"]:
            fig["rss_gib"], fig["largest"] = r["rss_gib"], index
        fig["tree_gib"] = max(fig["tree_gib"], r["tree_gib"])
        total["wall_s"] += r["wall_s"]
        total["rss_gib"], total["tree_gib"] = max(total["rss_gib"], r["rss_gib"]), max(total["tree_gib"], r["tree_gib"])
        if r["rc"] != 0:
            total.update(rc=r["rc"], killed=r["killed"], tail=f"{kind} {index}: " + r["tail"])
            break
    return total


def bench(n: int, args: argparse.Namespace, work: Path) -> dict[str, dict]:
    d = work / f"n{n}"
    if args.cohort is not None:
        # an earlier run's cohort, ingest and split (read only): its params, ingested/ and splits.parquet
        src = args.cohort / f"n{n}"
        d.mkdir(parents=True, exist_ok=True)
        shape = {"subjects": n, "from": str(src)}
        size = 0.0
        print(f"\n== {n:,} subjects: the cohort, ingest and split of {src} (read only)", flush=True)
        # a copy: a stage takes its run lock beside its params file, which must not be in the read-only folder
        params = d / "params.yaml"
        shutil.copyfile(src / "params.yaml", params)
        ing, spl = str(src / "ingested"), str(src / "splits.parquet")
    else:
        meds = d / "meds"
        t = time.perf_counter()
        shape = write_cohort(meds, n, args.events_per_subject, args.codes, args.seed, args.shard_subjects,
                             args.history_share)  # fmt: skip
        size = sum(p.stat().st_size for p in meds.rglob("*") if p.is_file())
        print(f"\n== {n:,} subjects: {shape['rows']:,} MEDS rows, {shape['samples']:,} samples, {shape['shards']} "
              f"data shards, {size / 2**30:.2f} GiB (written in {time.perf_counter() - t:.0f} s, untimed)", flush=True)
        params = d / "params.yaml"
        stage_params(meds, params, args.train_batches, n, args.descriptors)
        ing, spl = str(d / "ingested"), str(d / "splits.parquet")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    py, p = [sys.executable, "-m", "seqsetvae"], ["--params", str(params)]
    proc = str(d / "processed")
    cmds = {
        "ingest": [*py, "ingest", *p, "--out", ing],
        "split": [*py, "split", *p, "--ingested", ing, "--out", spl],
        "preprocess": [*py, "preprocess", *p, "--ingested", ing, "--splits", spl, "--out", proc],
        "baseline": [*py, "baseline", *p, "--ingested", ing, "--splits", spl, "--fold", "0",
                     "--predictions-dir", str(d / "pred_baseline"), "--metrics-dir", str(d / "metrics_baseline"),
                     "--details", str(d / "baseline_details.json")],
        "pretrain": [*py, "pretrain", *p, "--data", proc, "--fold", "0", "--out", str(d / "pretrain"),
                     "--metrics", str(d / "pretrain.json"), "--details", str(d / "pretrain_details.json"),
                     "--curves", str(d / "pretrain_curves")],
        "finetune": [*py, "finetune", *p, "--data", proc, "--fold", "0", "--pretrained", str(d / "pretrain"),
                     "--out", str(d / "finetune"), "--metrics", str(d / "finetune.json"),
                     "--details", str(d / "finetune_details.json"), "--curves", str(d / "finetune_curves"),
                     "--predictions", str(d / "predictions.parquet")],
        "evaluate": [*py, "evaluate", *p, "--predictions", str(d / "predictions.parquet"),
                     "--metrics", str(d / "evaluate.json"), "--details", str(d / "evaluate_details.json"),
                     "--meds-predictions", str(d / "meds_predictions.parquet")],
    }  # fmt: skip
    figures: dict[str, dict] = {"_cohort": {**shape, "gib": size / 2**30}}
    if args.cohort is not None:
        figures["ingest"] = figures["split"] = {"rc": 0, "reused": shape["from"]}
    for name in args.stages:
        missing = [s for s in NEEDS.get(name, []) if figures.get(s, {}).get("rc") != 0]
        if missing == ["pretrain"] and (d / "pretrain" / "best.ckpt").exists() and (d / "pretrain" / "SHA256SUMS").exists():
            # pretrain was killed in its end-of-stage evaluation, after fit wrote (and checksummed) best.ckpt:
            # finetune measures on that checkpoint (said in the output)
            missing = []
            print("  (finetune on the best.ckpt the killed pretrain wrote after fit)", flush=True)
        if missing:
            figures[name] = {"rc": None, "skipped": f"needs {missing[0]}"}
            print(f"  {name:10s} not run: needs {missing[0]}", flush=True)
            continue
        if name == "ingest" and args.ingest_jobs:
            r = run_ingest_jobs([*py, "ingest"], p, ing, str(d / "ingest_parts"), n_shards(n), env, args)
        elif name == "preprocess_jobs":
            import yaml

            shards = yaml.safe_load(Path(params).read_text())["data"]["shards"]
            r = run_preprocess_jobs(py, p, ing, spl, d / "preprocess_jobs", len(shards), [0], env, args)
        else:
            r = run_stage(cmds[name], env, args.rss_limit_gib, args.stage_timeout)
        figures[name] = r
        ckpt = d / name / "best.ckpt"
        if name in ("pretrain", "finetune") and ckpt.exists():
            # training (fit) ends with best.ckpt written; the rest of the stage evaluates whole splits
            r["fit_s"] = ckpt.stat().st_mtime - r["started"]
        how = "ok" if r["rc"] == 0 else f"FAILED rc={r['rc']}" + (f" (killed: {r['killed']})" if r["killed"] else "")
        fit = f", best.ckpt after {r['fit_s']:.0f} s" if "fit_s" in r else ""
        print(f"  {name:10s} {r['wall_s']:8.1f} s ({r['cpu_s']:.1f} s CPU)  peak RSS {r['rss_gib']:6.2f} GiB (tree {r['tree_gib']:.2f})  {how}{fit}",
              flush=True)  # fmt: skip
        for kind, j in r.get("jobs", {}).items():
            print(f"    {kind:8s} {j['jobs']:4d} job(s), {j['wall_s']:8.1f} s summed ({j['cpu_s']:.1f} s CPU), largest peak RSS {j['rss_gib']:.2f} GiB "
                  f"(tree {j['tree_gib']:.2f}; {kind} {j['largest']})", flush=True)
        if r["rc"] != 0:
            print("    " + r["tail"][-1500:].replace("\n", "\n    "), flush=True)
    for rep in ("ingested/ingest_report.json", "processed/preprocess_report.json"):
        if (d / rep).exists():
            figures["_" + rep.split("/")[0]] = json.loads((d / rep).read_text())
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, nargs="+", default=[30_000, 100_000, 300_000])
    ap.add_argument("--events-per-subject", type=int, default=1000, help="mean events per subject (scale down)")
    ap.add_argument("--codes", type=int, default=3000)
    ap.add_argument("--history-share", type=float, default=0.55, help="share of a subject's events before the stay")
    ap.add_argument("--shard-subjects", type=int, default=50_000, help="subjects per MEDS data shard")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-batches", type=int, default=5, help="trainer.limit_train_batches (one epoch)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--descriptors", default="none", choices=["none", "admission_set"],
                    help="preprocess.descriptors: admission_set gives every sample its descriptor set")
    ap.add_argument("--rss-limit-gib", type=float, default=10.0, help="kill a stage whose process tree exceeds it")
    ap.add_argument("--stage-timeout", type=float, default=3600.0, help="kill a stage running longer (s)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the cohorts and stage outputs")
    ap.add_argument("--cohort", type=Path, default=None, metavar="WORK",
                    help="take each size's cohort, ingest and split from an earlier run's --work WORK (n<N>/: "
                         "params.yaml, ingested/, splits.parquet; read only) instead of writing one: for the "
                         "stages after split")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    ap.add_argument("--ingest-jobs", action="store_true",
                    help="run ingest as DVC does: each shard job, then the merge, each its own process")
    ap.add_argument("--write-only", type=Path, default=None, metavar="DIR",
                    help="write the cohort of the first --subjects size to DIR and stop")  # fmt: skip
    args = ap.parse_args()
    if args.cohort is not None and {"ingest", "split"} & set(args.stages):
        ap.error("--cohort reuses an earlier run's ingest and split: leave them out of --stages")
    if args.write_only:
        shape = write_cohort(args.write_only, args.subjects[0], args.events_per_subject, args.codes, args.seed,
                             args.shard_subjects, args.history_share)  # fmt: skip
        print(json.dumps(shape))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_meds_scale."))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f}, {os.cpu_count()} cores; {' '.join(sys.argv)}", flush=True)
    results: dict[int, dict] = {}
    try:
        for n in args.subjects:
            results[n] = bench(n, args, work)
            if args.json:
                args.json.write_text(json.dumps({"argv": sys.argv, "load_start": load, "results": results},
                                                indent=1, default=str))  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    n0 = min(results)
    print(f"\nsubjects   stage       rc   wall s  wall / wall at {n0:,} (size x{'':1s})  peak RSS GiB (tree)")
    for n, fig in results.items():
        for name in args.stages:
            r = fig[name]
            if r.get("rc") is None:
                print(f"{n:<10,d} {name:10s} {'-':>3s}  not run ({r['skipped']})")
                continue
            base = results[n0][name]
            ratio = f"{r['wall_s'] / base['wall_s']:6.2f} (x{n / n0:.0f})" if n != n0 and base.get("rc") == 0 else "     -"
            ratio = (">" + ratio.strip()) if r.get("killed") and ratio.strip() != "-" else ratio  # a lower bound
            fit = f"  best.ckpt after {r['fit_s']:.0f} s" if "fit_s" in r else ""
            killed = f"  killed: {r['killed']}" if r.get("killed") else ""
            print(f"{n:<10,d} {name:10s} {r['rc']:3d}  {r['wall_s']:7.1f}  {ratio:>22s}  {r['rss_gib']:6.2f} ({r['tree_gib']:.2f})"
                  f"{fit}{killed}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
