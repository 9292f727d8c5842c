"""Kill criteria of the pretraining objectives of issue 29 C, on one fold's val split.

C1 (multi-horizon forecasting): squared error of the head's forecast of each variable's mean value over
(t, t + h] (normalised units), over every val set t and variable observed in that horizon, against
  - a ridge regression per variable from the observation state at t (models/observation.py on sets <= t:
    last / mean / min / max / log count / log time since, of every variable), fitted on train,
  - the last value at t carried forward (0, the train median, where the variable was never seen).
  Kill if the model's 12 h error is not at least 5 % below the ridge's.
C2 (masked spans): squared error of the span head's prediction of each hidden value (the eval mask: fixed per
stay), against
  - the variable's last visible value before it (carried forward; 0 when none),
  - a ridge per variable from the observation state of the visible sets at or before the event, plus
    log1p(gap to the event), fitted on train with the same masking.
  Kill if the model's error is not at least 10 % below the carried-forward value and below the ridge.

    python benchmarks/eval_objectives.py --params P --data data/processed --fold 0 --checkpoint models/.../best.ckpt \
        --objective horizon|span [--train-keep 0.05] [--train-rows 60000] [--ridge-on-h]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import RidgeCV

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqsetvae.config import load_params  # noqa: E402
from seqsetvae.data.datamodule import SetSequenceDataModule  # noqa: E402
from seqsetvae.models.objectives import horizon_targets, predict_hidden  # noqa: E402
from seqsetvae.models.observation import FEATURES, observation_vector  # noqa: E402
from seqsetvae.stages.pretrain import fold_dir  # noqa: E402
from seqsetvae.training.pretrain_module import load_pretrain_model  # noqa: E402

ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


def prefix_observation(batch, vocab: int) -> torch.Tensor:
    """[B, S, F]: the observation state of each stay on its sets <= t, for every t (rows past a stay's end:
    its whole stay)."""
    s = batch["set_mask"].shape[1]
    rows = []
    for t in range(s):
        prefix = {k: (v[:, : t + 1] if v.dim() >= 2 else v) for k, v in batch.items()}
        rows.append(observation_vector(prefix, vocab))
    return torch.stack(rows, dim=1)


def last_index(vocab: int) -> slice:
    j = FEATURES.index("last")
    return slice(j * (vocab - 1), (j + 1) * (vocab - 1))


def fit_predict(xtr, ytr, ctr, xva, cva, vocab):
    """A ridge per variable (code c) fitted on train rows of that code; predictions for the val rows."""
    pred = np.zeros(len(cva))
    for c in range(1, vocab):
        tr, va = ctr == c, cva == c
        if not va.any():
            continue
        if tr.sum() < 20:
            continue  # too few: predict 0 (the train median)
        mu, sd = xtr[tr].mean(0), xtr[tr].std(0) + 1e-6
        model = RidgeCV(alphas=ALPHAS).fit((xtr[tr] - mu) / sd, ytr[tr])
        pred[va] = model.predict((xva[va] - mu) / sd)
    return pred


def rel(a: float, b: float) -> float:
    return round(1.0 - a / b, 4)


def horizon_rows(model, loader, vocab, horizons, with_model: bool, keep: float = 1.0):
    """Per (set, horizon, variable observed there): obs features at t, target, code, horizon, model forecast.
    `keep` < 1: a seeded random share of the rows (the train rows would not fit in memory)."""
    out = {k: [] for k in ("x", "y", "code", "h", "pred", "last", "hx")}
    li = last_index(vocab)
    g = torch.Generator().manual_seed(0)
    for batch in loader:
        target, count = horizon_targets(batch, vocab, horizons)  # [B, S, H, V]
        obs = prefix_observation(batch, vocab)  # [B, S, F]
        scored = count > 0
        if keep < 1.0:
            scored &= torch.rand(scored.shape, generator=g) < keep
        b_i, s_i, h_i, v_i = scored.nonzero(as_tuple=True)
        out["x"].append(obs[b_i, s_i].numpy())
        out["y"].append(target[scored].numpy())
        out["code"].append(v_i.numpy())
        out["h"].append(h_i.numpy())
        out["last"].append(obs[b_i, s_i][torch.arange(len(v_i)), li.start + v_i - 1].numpy())
        context = model.encode(batch).context
        out["hx"].append(context[b_i, s_i].numpy())  # h_t: what the backbone offers a forecaster
        if with_model:
            mean, _ = model.objectives.horizon(context)
            out["pred"].append(mean[scored].numpy())
    return {k: np.concatenate(v) for k, v in out.items() if v}


def span_rows(model, loader, vocab, with_model: bool):
    """Per hidden event (eval mask): obs features of the visible context + log1p(gap), value, code, forecast."""
    out = {k: [] for k in ("x", "y", "code", "pred", "last")}
    li = last_index(vocab)
    for batch in loader:
        visible, view = model.objectives.hide(batch, 0, training=False)
        obs = prefix_observation(visible, vocab)  # [B, S', F]
        obs = torch.cat([torch.zeros_like(obs[:, :1]), obs], dim=1)  # index 0: nothing visible yet
        pos = view.context_index + 1
        times = torch.cat([torch.zeros_like(visible["set_times"][:, :1]), visible["set_times"]], dim=1)
        gap = batch["set_times"] - times.gather(1, pos)
        hid = view.hidden
        b_i, s_i, e_i = hid.nonzero(as_tuple=True)
        codes = batch["codes"][hid]
        x = obs[b_i, pos[b_i, s_i]]
        last = x[torch.arange(len(codes)), li.start + codes - 1]
        last = torch.where(pos[b_i, s_i] > 0, last, torch.zeros_like(last))
        out["x"].append(torch.cat([x, torch.log1p(gap[b_i, s_i].clamp(min=0))[:, None]], dim=1).numpy())
        out["y"].append(batch["values"][hid].numpy())
        out["code"].append(codes.numpy())
        out["last"].append(last.numpy())
        if with_model:
            pred = predict_hidden(model.objectives.span, model.transformer.start, model.encode(visible).context,
                                  batch, view)
            assert torch.equal(pred.values, batch["values"][hid])
            out["pred"].append(pred.mean.numpy())
    return {k: np.concatenate(v) for k, v in out.items() if v}


def subsample(rows: dict, n: int, seed: int) -> dict:
    m = len(rows["y"])
    if m <= n:
        return rows
    keep = np.random.default_rng(seed).choice(m, n, replace=False)
    return {k: v[keep] for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", required=True)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--objective", choices=("horizon", "span"), required=True)
    ap.add_argument("--train-rows", type=int, default=60000, help="C2: train rows the ridges are fitted on (subsample)")
    ap.add_argument("--train-keep", type=float, default=0.05, help="C1: share of the train target cells the ridges use")
    ap.add_argument("--ridge-on-h", action="store_true", help="C1: also ridges on h_t and on [state, h_t]")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    dm = SetSequenceDataModule(fold_dir(args.data, args.fold), params.loader)
    vocab = dm.vocab_size
    model = load_pretrain_model(args.checkpoint, params.pretrain)
    result: dict = {"checkpoint": str(args.checkpoint), "fold": args.fold, "split": "val"}
    with torch.no_grad():
        if args.objective == "horizon":
            horizons = list(params.pretrain.horizon_forecast.horizons_hours)
            tr = horizon_rows(model, dm.dataloader("train", shuffle=False), vocab, horizons, False, args.train_keep)
            va = horizon_rows(model, dm.dataloader("val", shuffle=False), vocab, horizons, True)
            for h, delta in enumerate(horizons):
                t, v = tr["h"] == h, va["h"] == h
                ridge = fit_predict(tr["x"][t], tr["y"][t], tr["code"][t], va["x"][v], va["code"][v], vocab)
                y = va["y"][v]
                mse = {"model": float(np.mean((va["pred"][v] - y) ** 2)), "ridge": float(np.mean((ridge - y) ** 2)),
                       "last_value": float(np.mean((va["last"][v] - y) ** 2))}
                if args.ridge_on_h:  # a ridge on the frozen h_t, and on [observation state, h_t]
                    for name, xtr, xva in (("ridge_h", tr["hx"][t], va["hx"][v]),
                                           ("ridge_obs_h", np.hstack([tr["x"][t], tr["hx"][t]]),
                                            np.hstack([va["x"][v], va["hx"][v]]))):
                        pr = fit_predict(xtr, tr["y"][t], tr["code"][t], xva, va["code"][v], vocab)
                        mse[name] = float(np.mean((pr - y) ** 2))
                result[f"{delta:g}h"] = {"n_targets": int(v.sum()), "mse": {k: round(x, 4) for k, x in mse.items()},
                                         "model_below_ridge": rel(mse["model"], mse["ridge"]),
                                         "model_below_last_value": rel(mse["model"], mse["last_value"])}
        else:
            tr = subsample(span_rows(model, dm.dataloader("train", shuffle=False), vocab, False), args.train_rows, 0)
            va = span_rows(model, dm.dataloader("val", shuffle=False), vocab, True)
            ridge = fit_predict(tr["x"], tr["y"], tr["code"], va["x"], va["code"], vocab)
            y = va["y"]
            n_events = sum(int(b["event_mask"].sum()) for b in dm.dataloader("val", shuffle=False))
            mse = {"model": float(np.mean((va["pred"] - y) ** 2)), "ridge": float(np.mean((ridge - y) ** 2)),
                   "last_value": float(np.mean((va["last"] - y) ** 2))}
            result["span"] = {"n_hidden": int(len(y)), "hidden_share_of_events": round(len(y) / n_events, 4),
                              "mse": {k: round(x, 4) for k, x in mse.items()},
                              "model_below_ridge": rel(mse["model"], mse["ridge"]),
                              "model_below_last_value": rel(mse["model"], mse["last_value"])}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
