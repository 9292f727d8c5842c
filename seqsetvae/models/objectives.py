"""Pretraining objectives whose targets are not in the encoder's input (issue 29, item C).

The reconstruction term decodes set t from its own z_t, so the transformer only has to supply what the
squeezed z_t drops (for vitals: about the last value). The two objectives here ask the sequence model for
something the input at t does not hold. Each is a params switch (`pretrain.horizon_forecast.weight`,
`pretrain.span_mask.weight`), 0 = off; a model with both off builds no head and has no extra parameter.

C1, multi-horizon value forecasting (after STraTS, Tipirneni & Reddy 2022). A head maps h_t (the causal
transformer's output at set t: sets <= t only) to a mean and a log-variance per variable and horizon.
The target of (t, Δ, v) is the MEAN of the values of variable v observed in the sets with time in
(time_t, time_t + Δ], one target per variable and horizon (not one per value): a variable measured every
10 minutes would otherwise outweigh a lab drawn once. Cells where v is not observed in the horizon are
not scored. The score is the Gaussian NLL averaged over the scored cells (nats per target). No z_{t+1}
is involved and set t's own values are never targets. Targets come from cumulative per-variable sums
over the time-ordered sets and one `searchsorted` per horizon (`horizon_targets`): no Python loop over
patients or sets.

C2, masked span modelling. A share of the (stay, variable) pairs is chosen; for each, the events of that
variable inside one span of `span_hours` (uniform length, uniform start in the stay) are hidden: removed
from the batch before the encoder sees it (their event slots are cleared, and a set left empty is dropped
and the remaining sets re-packed to the left, so not even the time of a hidden-only set reaches the
model). Each hidden event is then scored by a Gaussian NLL of its value from the context of the visible
sets at or before its time (the transformer's output at the last visible set with time <= the event's,
a learned start vector when there is none) and the gap from that set to the event (`SpanHead`). The loss
is averaged over the hidden events (nats per event). The transformer is causal, so the context is the past
(and the present set's other variables); a span of 6-24 h means the last value of the variable is hours
old, which defeats carrying it forward.

The choice of pairs and spans is a hash of (pretrain.seed, step, subject id, variable): seeded and new
at every training step, and in eval (step -1) the same for a stay whatever batch it falls in.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from seqsetvae.data.batch import PAD_CODE, Batch

_LOG_2PI = math.log(2.0 * math.pi)
LOGVAR_MIN, LOGVAR_MAX = -8.0, 8.0  # as the set decoder (models/setvae.py)
EVAL_STEP = -1  # the hash's step in eval mode: one fixed mask per stay


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise Gaussian NLL (nats)."""
    return 0.5 * (_LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar))


# ------------------------------------------------------------------------------------------ C1 targets


def per_set_value_sums(batch: Batch, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of each variable's values in each set, [B, S, V] float64 (PAD column and padding 0)."""
    real = batch["event_mask"] & batch["set_mask"][..., None] & (batch["codes"] != PAD_CODE)
    codes = batch["codes"].masked_fill(~real, PAD_CODE)
    b, s, _ = codes.shape
    w = real.to(torch.float64)
    sums = torch.zeros(b, s, vocab_size, dtype=torch.float64, device=codes.device)
    sums.scatter_add_(2, codes, batch["values"].to(torch.float64) * w)
    counts = torch.zeros_like(sums).scatter_add_(2, codes, w)
    sums[..., PAD_CODE] = 0.0
    counts[..., PAD_CODE] = 0.0
    return sums, counts


def horizon_end_index(set_times: torch.Tensor, set_mask: torch.Tensor, horizons: list[float]) -> torch.Tensor:
    """[B, S, H]: index of the last real set with time <= time_t + Δ_h (>= t at a real set t)."""
    times = set_times.masked_fill(~set_mask, math.inf).contiguous()  # sorted per row: left-aligned, in time order
    delta = torch.tensor(horizons, dtype=set_times.dtype, device=set_times.device)
    query = (set_times[..., None] + delta).reshape(set_times.shape[0], -1).contiguous()  # [B, S*H]
    end = torch.searchsorted(times, query, right=True) - 1
    return end.clamp(min=0).view(*set_times.shape, len(horizons))


def horizon_targets(batch: Batch, vocab_size: int, horizons: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, count), each [B, S, H, V]: per real set t, horizon h and variable v, the mean and the number of
    v's values in the sets with time in (time_t, time_t + horizons[h]]. count 0 (and mean 0) where v is not
    observed there, at padded sets and in the PAD column."""
    sums, counts = per_set_value_sums(batch, vocab_size)
    csum, ccount = sums.cumsum(dim=1), counts.cumsum(dim=1)  # [B, S, V]: sets <= s
    b, s, v = csum.shape
    end = horizon_end_index(batch["set_times"], batch["set_mask"], horizons)  # [B, S, H]
    idx = end.view(b, -1, 1).expand(-1, -1, v)
    total = csum.gather(1, idx).view(b, s, -1, v) - csum[:, :, None, :]
    count = (ccount.gather(1, idx).view(b, s, -1, v) - ccount[:, :, None, :]).round()
    count = count * batch["set_mask"][:, :, None, None]
    mean = torch.where(count > 0, total / count.clamp(min=1.0), torch.zeros_like(total))
    dtype = batch["values"].dtype
    return mean.to(dtype), count.to(dtype)


class HorizonHead(nn.Module):
    """h_t [..., D] -> (mean, logvar) [..., H, V] of each variable's mean value over each horizon."""

    def __init__(self, d_model: int, hidden: int, vocab_size: int, n_horizons: int):
        super().__init__()
        self.shape = (n_horizons, 2, vocab_size)
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, n_horizons * 2 * vocab_size))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(h).view(*h.shape[:-1], *self.shape)
        return out[..., 0, :], out[..., 1, :].clamp(LOGVAR_MIN, LOGVAR_MAX)


def horizon_nll_cells(
    head: HorizonHead, context: torch.Tensor, batch: Batch, vocab_size: int, horizons: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, scored): [B, S, H, V] NLL of every target cell from h_t = context[:, t] (0 where not scored) and
    the bool mask of scored cells (v observed in (t, t + Δ])."""
    target, count = horizon_targets(batch, vocab_size, horizons)
    mean, logvar = head(context)
    scored = count > 0
    nll = torch.where(scored, gaussian_nll(target, mean, logvar), torch.zeros_like(mean))
    return nll, scored


# ------------------------------------------------------------------------------------------ C2 spans

_P = 2_147_483_647  # 2^31 - 1: every product below stays under 2^62, so int64 never overflows


def _mix(x: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    x = (x * 48271 + (torch.as_tensor(value, device=x.device) % _P)) % _P
    return (x * x + 1_013_904_223) % _P  # the square makes the hash nonlinear in its inputs


def stay_variable_uniforms(seed: int, step: int, subject_id: torch.Tensor, vocab_size: int, n: int) -> torch.Tensor:
    """[B, V, n] uniforms in [0, 1), a deterministic hash of (seed, step, subject, variable, stream)."""
    dev = subject_id.device
    x = torch.full((subject_id.shape[0], vocab_size, n), 12345, dtype=torch.int64, device=dev)
    for value in (seed + 1, step + 2, subject_id.long().abs()[:, None, None],
                  torch.arange(vocab_size, device=dev)[None, :, None], torch.arange(n, device=dev)[None, None, :]):
        x = _mix(x, value)
    for _ in range(3):
        x = _mix(x, 7)
    return x.to(torch.float64) / _P


class SpanView(NamedTuple):
    """A batch with spans hidden: `visible` is what the encoder gets; the rest locates the hidden events."""

    visible: Batch  # hidden events removed, emptied sets dropped, sets re-packed to the left
    hidden: torch.Tensor  # [B, S, E] bool over the ORIGINAL batch: the hidden events
    context_index: torch.Tensor  # [B, S] long: per original set, the visible set at or before it (-1: none)


def hide_spans(
    batch: Batch, vocab_size: int, share: float, span_hours: list[float], seed: int, step: int
) -> SpanView:
    """Choose about `share` of the (stay, variable) pairs and hide each one's events in one span."""
    codes, event_mask, set_mask, times = batch["codes"], batch["event_mask"], batch["set_mask"], batch["set_times"]
    b, s, e = codes.shape
    u = stay_variable_uniforms(seed, step, batch["subject_id"], vocab_size, 3)  # [B, V, 3]
    lo, hi = span_hours
    length = lo + (hi - lo) * u[..., 1]
    n_sets = set_mask.sum(dim=1)
    end_time = times.gather(1, (n_sets - 1).clamp(min=0)[:, None]).to(torch.float64)  # [B, 1]
    start = u[..., 2] * (end_time - length).clamp(min=0.0)  # [B, V]
    chosen = u[..., 0] < share
    chosen[:, PAD_CODE] = False
    flat = codes.reshape(b, s * e)
    ev_start = start.gather(1, flat).view(b, s, e)
    ev_len = length.gather(1, flat).view(b, s, e)
    t = times.to(torch.float64)[..., None]
    real = event_mask & set_mask[..., None]
    hidden = real & chosen.gather(1, flat).view(b, s, e) & (t >= ev_start) & (t < ev_start + ev_len)

    keep_ev = real & ~hidden
    keep = keep_ev.any(dim=2)  # [B, S]: sets that still hold a visible event
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept sets first, in time order
    new_mask = torch.arange(s, device=codes.device)[None] < keep.sum(dim=1, keepdim=True)
    idx3 = order[..., None].expand(-1, -1, e)
    ev = keep_ev.gather(1, idx3) & new_mask[..., None]
    visible = dict(batch)
    visible.update(
        codes=torch.where(ev, codes.gather(1, idx3), PAD_CODE),
        values=torch.where(ev, batch["values"].gather(1, idx3), 0.0),
        event_mask=ev,
        set_mask=new_mask,
        set_times=torch.where(new_mask, times.gather(1, order), 0.0),
    )
    context_index = keep.long().cumsum(dim=1) - 1
    return SpanView(Batch(**visible), hidden, context_index)


class SpanHead(nn.Module):
    """[context h, log1p(gap hours)] -> (mean, logvar) [..., V] of a hidden value of each variable."""

    def __init__(self, d_model: int, hidden: int, vocab_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model + 1, hidden), nn.GELU(), nn.Linear(hidden, 2 * vocab_size))

    def forward(self, h: torch.Tensor, gap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(torch.cat([h, torch.log1p(gap.clamp(min=0.0))[..., None]], dim=-1)).chunk(2, dim=-1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class SpanPrediction(NamedTuple):
    """Per hidden event (row-major over the original [B, S, E]): its code, value, predicted mean / logvar."""

    codes: torch.Tensor
    values: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor


def predict_hidden(
    head: SpanHead, start: torch.Tensor, context: torch.Tensor, batch: Batch, view: SpanView
) -> SpanPrediction:
    """Predict each hidden event's value from the visible context at or before its time.

    `context` [B, S', D] is the transformer's output on `view.visible`; `start` [1, 1, D] the learned vector
    used when no visible set precedes the event."""
    b = context.shape[0]
    ctx = torch.cat([start.expand(b, 1, -1), context], dim=1)  # index 0: no visible set yet
    ctx_times = torch.cat([torch.zeros_like(view.visible["set_times"][:, :1]), view.visible["set_times"]], dim=1)
    pos = view.context_index + 1  # [B, S]
    h = ctx.gather(1, pos[..., None].expand(-1, -1, ctx.shape[-1]))  # [B, S, D] per original set
    gap = batch["set_times"] - ctx_times.gather(1, pos)  # [B, S]
    hid = view.hidden
    set_of_event = hid.any(dim=2)  # only sets with a hidden event go through the head
    mean, logvar = head(h[set_of_event], gap[set_of_event])  # [n, V]
    codes = batch["codes"][set_of_event]  # [n, E]
    ev = hid[set_of_event]
    m = mean.gather(1, codes)[ev]
    lv = logvar.gather(1, codes)[ev]
    return SpanPrediction(codes[ev], batch["values"][set_of_event][ev], m, lv)


# ------------------------------------------------------------------------------------------ the module


class PretrainObjectives(nn.Module):
    """The switchable objectives of SeqSetVAEPretrain: built from params.pretrain, heads only where on.

    `hide(batch, step, training)` -> (the batch the encoder sees, the span view or None);
    `terms(...)` -> {"horizon", "span"}: each a scalar, 0 when off. `weighted(terms)` is their share of
    the loss. `enabled` names the terms that are on (the curves the training module logs).
    """

    def __init__(self, d_model: int, hidden: int, vocab_size: int, objective) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.seed = int(objective.seed)
        self.horizon_params = objective.horizon_forecast
        self.span_params = objective.span_mask
        self.horizon = (
            HorizonHead(d_model, hidden, vocab_size, len(self.horizon_params.horizons_hours))
            if self.horizon_params.weight > 0 else None
        )
        self.span = SpanHead(d_model, hidden, vocab_size) if self.span_params.weight > 0 else None

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(n for n, m in (("horizon", self.horizon), ("span", self.span)) if m is not None)

    def hide(self, batch: Batch, step: int, training: bool) -> tuple[Batch, SpanView | None]:
        if self.span is None:
            return batch, None
        p = self.span_params
        view = hide_spans(batch, self.vocab_size, p.share, list(p.span_hours), self.seed,
                          step if training else EVAL_STEP)
        return view.visible, view

    def terms(
        self, context: torch.Tensor, start: torch.Tensor, batch: Batch, view: SpanView | None
    ) -> dict[str, torch.Tensor]:
        """`context` is the transformer's output on the batch the encoder saw (view.visible with spans on);
        `batch` is the original batch."""
        zero = context.new_zeros(())
        out = {"horizon": zero, "span": zero}
        if self.horizon is not None:
            seen = batch if view is None else view.visible  # targets aligned with the context's sets
            nll, scored = horizon_nll_cells(self.horizon, context, seen, self.vocab_size,
                                            list(self.horizon_params.horizons_hours))
            out["horizon"] = nll.sum() / scored.sum().clamp(min=1)
        if self.span is not None and view is not None:
            pred = predict_hidden(self.span, start, context, batch, view)
            if pred.values.numel():
                out["span"] = gaussian_nll(pred.values, pred.mean, pred.logvar).mean()
            else:  # keep the head in the graph (DDP: every parameter gets a gradient each step)
                out["span"] = 0.0 * sum(p.sum() for p in self.span.parameters())
        return out

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.horizon_params.weight * terms["horizon"] + self.span_params.weight * terms["span"]
