"""What a pretrained backbone learned, in numbers a user can read (DESIGN: "The latent must carry the set").

Computed by the pretrain stage on the frozen model, once per fold after training (its cost: docs/benchmark.md):

- KL per latent dimension on val (nats per set), and how many dimensions sit clearly above the free-bits
  floor (KL_d > 2 x free_bits). A run squeezed to the floor shows every dimension near it.
- Informative units: dimensions whose Gaussian-channel information 0.5 log(1 + Var_n(mu_d) / E_n[sigma_d^2])
  exceeds twice the free-bits floor. The older Var(mu) > threshold count (`active_units`) cannot see a
  dimension held at the floor: its mu still varies, but by little compared with its posterior variance.
- A linear probe of the frozen features of the last set, [h, mu, sigma], plus the stay's mean mu:
  logistic regression fitted on train, scored on val (mortality AUROC / AUPRC), and ridge regressions of
  each variable's last observed value (R^2 on val, stays where the variable was observed).

The same probe of a randomly initialised backbone of the same architecture runs beside it: a
representation that a random backbone matches is a failed pretraining, whatever the ELBO says.

The screening gate (issue 29, `residual_gate`) asks what the backbone adds beside what the finetune head
already gets. Three logistic regressions of mortality, fitted on train and scored on val (AUROC / AUPRC):

    observation   the observation state alone (models/observation.py: each variable's last / mean / min /
                  max / log count / log time since last; the head's hand-made inputs)
    pretrained    the same plus the pretrained backbone's stay features: h at the last set and mean h
    random        the same plus a random backbone's stay features (same architecture, seeded init)

and the two differences pretrained - observation and pretrained - random. Same solver, regularisation
(GATE_C on standardised features) and stays for the three, so a difference is the features' alone; identical
features give exactly 0. A split larger than pretrain.gate_max_stays is probed on a seeded sample of that
many stays (`sample_stays`), the same for every run and seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from seqsetvae.data.batch import Batch, to_device
from seqsetvae.evaluation.metrics import DIGITS
from seqsetvae.models.losses import gaussian_kl
from seqsetvae.models.observation import FEATURES, observation_state

MIN_R2_STAYS = 20  # a variable is read back only where train and val have this many stays observing it
GATE_C = 0.1  # inverse L2 strength of the gate's logistic regressions (standardised features), as the probe's
GATE_SAMPLE_SEED = 0  # seed of the gate's stay sample: fixed, so runs with other pretrain seeds probe the same stays


class SplitEncoding:
    """Per-stay probe features and targets of one split, plus (optionally) every set's posterior."""

    def __init__(self) -> None:
        self.features: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.last_values: list[torch.Tensor] = []
        self.observed: list[torch.Tensor] = []
        self.mu_sets: list[torch.Tensor] = []
        self.logvar_sets: list[torch.Tensor] = []
        self.observation: list[torch.Tensor] = []  # [B, 6 (V-1)] the head's observation state
        self.stay: list[torch.Tensor] = []  # [B, 2 D] h at the last set, mean h over the real sets

    def add(self, enc: Any, batch: Batch, vocab_size: int, keep_sets: bool) -> None:
        real = enc.real
        n = real.sum(dim=1)
        last = (n - 1).clamp(min=0)[:, None, None]
        pick = lambda t: t.gather(1, last.expand(-1, -1, t.shape[-1])).squeeze(1)  # noqa: E731
        mean_mu = enc.mu.sum(dim=1) / n.clamp(min=1)[:, None].to(enc.mu.dtype)
        feats = torch.cat([pick(enc.context), pick(enc.mu), pick(torch.exp(0.5 * enc.logvar)), mean_mu], dim=-1)
        mean_h = enc.context.sum(dim=1) / n.clamp(min=1)[:, None].to(enc.context.dtype)  # context is 0 at padding
        state = observation_state(batch, vocab_size)
        self.observation.append(torch.cat([state[k] for k in FEATURES], dim=-1).float().cpu())
        self.stay.append(torch.cat([pick(enc.context), mean_h], dim=-1).float().cpu())
        self.features.append(feats.float().cpu())
        self.labels.append(batch["labels"].cpu())
        self.last_values.append(state["last"].cpu())
        self.observed.append((state["log_count"] > 0).cpu())
        if keep_sets:
            self.mu_sets.append(enc.mu_sets.cpu())
            self.logvar_sets.append(enc.logvar_sets.cpu())

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "X": torch.cat(self.features).double().numpy(),
            "y": torch.cat(self.labels).numpy(),
            "last": torch.cat(self.last_values).double().numpy(),
            "observed": torch.cat(self.observed).numpy(),
            "observation": torch.cat(self.observation).double().numpy(),
            "stay": torch.cat(self.stay).double().numpy(),
        }


@torch.no_grad()
def encode_split(model: Any, batches: Iterable[Batch], device: torch.device, keep_sets: bool = False) -> SplitEncoding:
    """Encode every batch once with a SeqSetVAEPretrain (eval mode) and collect the probe's inputs."""
    model.eval().to(device)
    out = SplitEncoding()
    for batch in batches:
        batch = to_device(batch, device)
        out.add(model.encode(batch), batch, model.cfg.vocab_size, keep_sets)
    return out


def latent_usage(mu_sets: torch.Tensor, logvar_sets: torch.Tensor, free_bits: float) -> dict[str, Any]:
    """KL per dimension, dimensions above the free-bits floor, informative units (see module docstring)."""
    kl_dims = gaussian_kl(mu_sets.double(), logvar_sets.double()).mean(dim=0)
    floor = 2.0 * free_bits if free_bits > 0 else 0.01
    info = 0.5 * torch.log1p(mu_sets.double().var(dim=0) / logvar_sets.double().exp().mean(dim=0))
    return {
        "kl_per_dim": [round(float(x), DIGITS) for x in kl_dims],
        "kl_per_dim_min": float(kl_dims.min()),
        "kl_per_dim_max": float(kl_dims.max()),
        "dims_above_floor": int((kl_dims > floor).sum()),
        "informative_units": int((info > floor).sum()),
        "information_per_dim": [round(float(x), DIGITS) for x in info],
    }


def _standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return [(a - mean) / sd for a in (train, *others)]


def linear_probe(train: dict[str, np.ndarray], val: dict[str, np.ndarray], tokens: list[str], seed: int) -> dict[str, Any]:
    """Mortality (logistic regression) and each variable's last value (ridge) from the frozen features."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import average_precision_score, r2_score, roc_auc_score

    Xtr, Xva = _standardise(train["X"], val["X"])
    result: dict[str, Any] = {"auroc": None, "auprc": None}  # None: a split with one class (tiny cohorts)
    if np.unique(train["y"]).size == 2 and np.unique(val["y"]).size == 2:
        clf = LogisticRegression(C=0.1, max_iter=2000, random_state=seed).fit(Xtr, train["y"])
        p = clf.predict_proba(Xva)[:, 1]
        result = {"auroc": float(roc_auc_score(val["y"], p)), "auprc": float(average_precision_score(val["y"], p))}
    r2: dict[str, float] = {}
    for j, name in enumerate(tokens[1:]):  # column j is vocabulary code j + 1 (PAD has none)
        tr, va = train["observed"][:, j], val["observed"][:, j]
        if tr.sum() < MIN_R2_STAYS or va.sum() < MIN_R2_STAYS:
            continue
        target_tr, target_va = train["last"][tr, j], val["last"][va, j]
        if target_va.std() < 1e-8:
            continue
        reg = Ridge(alpha=1.0).fit(Xtr[tr], target_tr)
        r2[name] = float(r2_score(target_va, reg.predict(Xva[va])))
    result["last_value_r2"] = {k: round(v, DIGITS) for k, v in sorted(r2.items())}
    result["last_value_r2_mean"] = float(np.mean(list(r2.values()))) if r2 else None
    result["variables_read_back"] = len(r2)
    return result


def sample_stays(n_stays: int, max_stays: int, seed: int = GATE_SAMPLE_SEED) -> np.ndarray | None:
    """Sorted indices of a seeded sample of `max_stays` of `n_stays` stays, or None to keep them all
    (max_stays 0, or a split no larger than it)."""
    if max_stays <= 0 or n_stays <= max_stays:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_stays, size=max_stays, replace=False))


def _logistic_scores(Xtr: np.ndarray, ytr: np.ndarray, Xva: np.ndarray, yva: np.ndarray, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score

    Xtr, Xva = _standardise(Xtr, Xva)
    clf = LogisticRegression(C=GATE_C, max_iter=5000, random_state=seed).fit(Xtr, ytr)
    p = clf.predict_proba(Xva)[:, 1]
    return {"auroc": float(roc_auc_score(yva, p)), "auprc": float(average_precision_score(yva, p))}


GATE_ROWS = ("observation", "pretrained", "random")


def residual_gate(
    train: dict[str, np.ndarray], val: dict[str, np.ndarray], random_train: dict[str, np.ndarray],
    random_val: dict[str, np.ndarray], seed: int,
) -> dict[str, Any]:
    """The screening gate (module docstring): mortality logistic regressions on train, scored on val.

    `train` / `val`: arrays of the pretrained backbone's encoding (SplitEncoding.arrays(): `observation`,
    `stay`, `y`); `random_*`: the random backbone's, of the same stays in the same order (its `observation` and
    `y` must equal the pretrained ones'). Returns per row (observation, pretrained, random) `auroc`, `auprc`
    and the feature count, `pretrained_minus_observation` and `pretrained_minus_random` (`auroc`, `auprc`),
    `n_train`, `n_val`, `val_positives`. The figures are None when a split holds one class only.
    """
    for name, a, b in (("train", train, random_train), ("val", val, random_val)):
        if not (np.array_equal(a["y"], b["y"]) and np.array_equal(a["observation"], b["observation"])):
            raise ValueError(f"residual_gate: the two backbones' {name} encodings are not of the same stays")
    inputs = {
        "observation": (train["observation"], val["observation"]),
        "pretrained": (np.hstack([train["observation"], train["stay"]]), np.hstack([val["observation"], val["stay"]])),
        "random": (np.hstack([train["observation"], random_train["stay"]]),
                   np.hstack([val["observation"], random_val["stay"]])),
    }
    ytr, yva = train["y"], val["y"]
    two_classes = np.unique(ytr).size == 2 and np.unique(yva).size == 2
    out: dict[str, Any] = {"n_train": int(ytr.size), "n_val": int(yva.size), "val_positives": int(yva.sum()),
                           "C": GATE_C}
    for row, (Xtr, Xva) in inputs.items():
        scores = _logistic_scores(Xtr, ytr, Xva, yva, seed) if two_classes else {"auroc": None, "auprc": None}
        out[row] = {**scores, "n_features": int(Xtr.shape[1])}
    for other in ("observation", "random"):
        out[f"pretrained_minus_{other}"] = {
            m: (out["pretrained"][m] - out[other][m]) if two_classes else None for m in ("auroc", "auprc")
        }
    return out
