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
"""

from __future__ import annotations

import torch

from seqsetvae.data.batch import PAD_CODE, Batch

FEATURES = ("last", "mean", "min", "max", "log_count", "log_since")


def observation_dim(vocab_size: int) -> int:
    return len(FEATURES) * (vocab_size - 1)


def observation_state(batch: Batch, vocab_size: int) -> dict[str, torch.Tensor]:
    """FEATURES -> [B, V-1] tensors (column j is vocabulary code j + 1)."""
    codes, values, event_mask = batch["codes"], batch["values"], batch["event_mask"]
    set_mask, set_times = batch["set_mask"], batch["set_times"]
    b, s, e = codes.shape
    v = vocab_size
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


def observation_vector(batch: Batch, vocab_size: int) -> torch.Tensor:
    """[B, 6 (V-1)]: the FEATURES concatenated, feature-major."""
    state = observation_state(batch, vocab_size)
    return torch.cat([state[k] for k in FEATURES], dim=-1)
