"""Per-variable observation state of a stay: what gradient boosting lives on, computed from a batch.

For every patient b and vocabulary code v (PAD excluded), over the patient's real events:

    last       normalised value at the last set where v was observed (mean if repeated in that set)
    mean, min, max   of the normalised values of v
    log_count  log1p(number of observations of v)
    log_since  log1p(hours from the last observation of v to the patient's last set)

A code never observed has count 0 (log_count 0), value features 0 (the train median, since values are
robust-normalised) and log_since = log1p(hours from admission to the last set) + 1, one log-unit beyond
anything observable, so "never" is distinguishable from "at admission".

Vectorised: one flat index (patient, code) for all real events and scatter reductions; no Python loop over
patients, sets or codes. Sets are time-ordered and left-aligned (the batch contract), so "last" is the
highest set index.

Bounded width (`finetune.observation_codes: K`). The state has 6 columns per code, so over a whole
vocabulary it grows as stays x codes: at 300,000 stays x 10,000 codes that is 72 GB in float32. With K > 0
the state covers only the K codes present in the most TRAIN stays (`code_stay_counts`, `select_codes`:
ties to the lower code, then in vocabulary order), and `observation_state(..., selected=)` computes exactly
the columns of those codes that the full state would hold (the other codes' events are dropped before the
scatter, so a batch costs B x (K + 1), not B x V). K = 0, or K >= the vocabulary, keeps every code: the
same columns, in the same order, as without the key.

The standardisation statistics are streamed (`RunningMoments`): float64 mean and sum of squared deviations
merged chunk by chunk (Chan et al.), so no float64 copy of the train state is ever made.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from seqsetvae.data.batch import PAD_CODE, Batch

FEATURES = ("last", "mean", "min", "max", "log_count", "log_since")


def n_observed_codes(vocab_size: int, max_codes: int) -> int:
    """How many codes the state covers: every non-PAD code when max_codes is 0 or at least that many."""
    every = vocab_size - 1
    return every if max_codes <= 0 or max_codes >= every else max_codes


def observation_dim(vocab_size: int, max_codes: int = 0) -> int:
    return len(FEATURES) * n_observed_codes(vocab_size, max_codes)


def observation_state(batch: Batch, vocab_size: int, selected: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """FEATURES -> [B, V-1] tensors (column j is vocabulary code j + 1); with `selected` ([K] increasing
    vocabulary indices, no PAD) -> [B, K] tensors, column j being code selected[j], equal to those columns
    of the full state."""
    v = vocab_size
    if selected is not None:
        # Remap: selected code selected[j] -> column j + 1, every other code -> PAD (dropped as padding). The set
        # mask and times are untouched, so each stay's end time (and "never seen") stays the same.
        column = torch.zeros(vocab_size, dtype=torch.long, device=batch["codes"].device)
        column[selected.to(column.device)] = torch.arange(1, selected.numel() + 1, device=column.device)
        batch = {**batch, "codes": column[batch["codes"]]}  # type: ignore[assignment]
        v = selected.numel() + 1
    codes, values, event_mask = batch["codes"], batch["values"], batch["event_mask"]
    set_mask, set_times = batch["set_mask"], batch["set_times"]
    b, s, e = codes.shape
    dtype = values.dtype
    real = event_mask & set_mask[..., None] & (codes != PAD_CODE)
    pat = torch.arange(b, device=codes.device)[:, None, None].expand(b, s, e)[real]
    set_idx = torch.arange(s, device=codes.device)[None, :, None].expand(b, s, e)[real]
    key = pat * v + codes[real]
    vals = values[real]
    n = b * v

    count = torch.zeros(n, dtype=dtype, device=codes.device).index_add_(0, key, torch.ones_like(vals))
    total = torch.zeros(n, dtype=dtype, device=codes.device).index_add_(0, key, vals)
    seen = count > 0
    mean = torch.where(seen, total / count.clamp(min=1), torch.zeros_like(total))
    vmin = torch.zeros(n, dtype=dtype, device=codes.device).scatter_reduce_(0, key, vals, "amin", include_self=False)
    vmax = torch.zeros(n, dtype=dtype, device=codes.device).scatter_reduce_(0, key, vals, "amax", include_self=False)
    last_set = torch.full((n,), -1, dtype=torch.long, device=codes.device)
    last_set.scatter_reduce_(0, key, set_idx, "amax", include_self=True)
    at_last = (set_idx == last_set[key]).to(dtype)
    last_sum = torch.zeros(n, dtype=dtype, device=codes.device).index_add_(0, key, vals * at_last)
    last_cnt = torch.zeros(n, dtype=dtype, device=codes.device).index_add_(0, key, at_last)
    last = torch.where(seen, last_sum / last_cnt.clamp(min=1), torch.zeros_like(last_sum))

    n_sets = set_mask.sum(dim=1)
    end_time = set_times.gather(1, (n_sets - 1).clamp(min=0)[:, None]).squeeze(1) * (n_sets > 0)  # [B]
    end = end_time.repeat_interleave(v)
    pat_of = torch.arange(b, device=codes.device).repeat_interleave(v)
    last_time = set_times[pat_of, last_set.clamp(min=0)]
    since = torch.where(seen, torch.log1p((end - last_time).clamp(min=0)), torch.log1p(end.clamp(min=0)) + 1.0)

    out = {"last": last, "mean": mean, "min": vmin, "max": vmax, "log_count": torch.log1p(count), "log_since": since}
    return {k: t.view(b, v)[:, PAD_CODE + 1 :] for k, t in out.items()}


def observation_vector(batch: Batch, vocab_size: int, selected: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 6 (V-1)] (or [B, 6 K] with `selected`): the FEATURES concatenated, feature-major."""
    state = observation_state(batch, vocab_size, selected)
    return torch.cat([state[k] for k in FEATURES], dim=-1)


# --------------------------------------------------------------------------------------------------
# Which codes (train only), and streamed train statistics


def code_stay_counts(
    codes: np.ndarray, set_offsets: np.ndarray, patient_offsets: np.ndarray, vocab_size: int,
    chunk_events: int = 1 << 20,
) -> np.ndarray:
    """[V] int64: number of stays with at least one event of each code (a packed split's arrays, which may
    be memory-mapped). Reads the events a block of whole stays at a time, ~chunk_events per block, so the
    memory is O(chunk_events + V) whatever the split's size."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    event_start = np.asarray(set_offsets)[np.asarray(patient_offsets)]  # [P + 1] first event of each stay
    n_patients = event_start.shape[0] - 1
    p0 = 0
    while p0 < n_patients:
        # The largest block of stays starting at p0 with about chunk_events events (at least one stay).
        p1 = int(np.searchsorted(event_start, event_start[p0] + chunk_events, side="right")) - 1
        p1 = min(max(p1, p0 + 1), n_patients)
        lo, hi = int(event_start[p0]), int(event_start[p1])
        stay = np.repeat(np.arange(p1 - p0, dtype=np.int64), np.diff(event_start[p0 : p1 + 1]))
        pairs = np.unique(stay * vocab_size + np.asarray(codes[lo:hi], dtype=np.int64))
        counts += np.bincount(pairs % vocab_size, minlength=vocab_size)
        p0 = p1
    return counts


def select_codes(stay_counts: np.ndarray, max_codes: int) -> np.ndarray | None:
    """The `max_codes` codes present in the most train stays (ties: the lower code), in vocabulary order;
    None when the state covers every code (max_codes 0, or at least the number of non-PAD codes)."""
    vocab_size = int(stay_counts.shape[0])
    if n_observed_codes(vocab_size, max_codes) == vocab_size - 1:
        return None
    candidates = np.arange(PAD_CODE + 1, vocab_size)
    order = np.lexsort((candidates, -stay_counts[candidates]))  # by count descending, then code ascending
    return np.sort(candidates[order[:max_codes]])


class RunningMoments:
    """Column mean and sample sd (ddof 1) of a [N, F] matrix seen in row chunks, in float64.

    Each chunk's mean and sum of squared deviations are computed two-pass in float64 (only the chunk is
    converted), then merged (Chan, Golub & LeVeque): no catastrophic cancellation, no float64 copy of the
    matrix. Memory: a few copies of one chunk plus 3 F float64.
    """

    def __init__(self, dim: int):
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.m2 = torch.zeros(dim, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        nb = int(x.shape[0])
        if nb == 0:
            return
        xb = x.detach().to("cpu", torch.float64)
        mb = xb.mean(dim=0)
        m2b = (xb - mb).pow_(2).sum(dim=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * (nb / n)
        self.m2 += m2b + delta.pow(2) * (self.n * nb / n)
        self.n = n

    def update_rows(self, x: torch.Tensor, chunk_bytes: int = 32 << 20) -> None:
        """`update` over row chunks of `x` of about chunk_bytes in float64."""
        rows = max(1, chunk_bytes // max(1, 8 * int(x.shape[1]) if x.dim() > 1 else 8))
        for start in range(0, int(x.shape[0]), rows):
            self.update(x[start : start + rows])

    def extend(self, chunks: Iterable[torch.Tensor]) -> RunningMoments:
        for c in chunks:
            self.update(c)
        return self

    def std(self) -> torch.Tensor:
        if self.n < 2:
            return torch.full_like(self.mean, float("nan"))  # as torch.std of one row
        return (self.m2 / (self.n - 1)).sqrt()
