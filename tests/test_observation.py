"""Per-variable observation state (seqsetvae/models/observation.py) against a plain-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqsetvae.models.observation import (
    FEATURES,
    RunningMoments,
    code_stay_counts,
    n_observed_codes,
    observation_dim,
    observation_state,
    observation_vector,
    select_codes,
)
from tests.test_setvae import VOCAB, pad_batch, random_batch


def reference(batch, vocab):
    """Loop over patients, sets and events: the definition in the module docstring, written out."""
    b = batch["codes"].shape[0]
    out = {k: torch.zeros(b, vocab - 1) for k in FEATURES}
    for p in range(b):
        n_sets = int(batch["set_mask"][p].sum())
        end = float(batch["set_times"][p, n_sets - 1]) if n_sets else 0.0
        seen: dict[int, list[tuple[int, float]]] = {}
        for s in range(n_sets):
            for e in range(batch["codes"].shape[2]):
                if batch["event_mask"][p, s, e]:
                    seen.setdefault(int(batch["codes"][p, s, e]), []).append((s, float(batch["values"][p, s, e])))
        for code in range(1, vocab):
            j = code - 1
            obs = seen.get(code)
            if not obs:
                out["log_since"][p, j] = math.log1p(end) + 1.0
                continue
            vals = [v for _, v in obs]
            last_s = max(s for s, _ in obs)
            at_last = [v for s, v in obs if s == last_s]
            out["last"][p, j] = sum(at_last) / len(at_last)
            out["mean"][p, j] = sum(vals) / len(vals)
            out["min"][p, j] = min(vals)
            out["max"][p, j] = max(vals)
            out["log_count"][p, j] = math.log1p(len(vals))
            out["log_since"][p, j] = math.log1p(end - float(batch["set_times"][p, last_s]))
    return out


def test_matches_the_reference_including_repeats_and_unobserved_codes():
    batch = random_batch(3, b=5, s=6, e=5)
    batch["codes"][0, 2, :2] = 3  # a code repeated within one set
    got = observation_state(batch, VOCAB)
    want = reference(batch, VOCAB)
    assert set(got) == set(FEATURES)
    for k in FEATURES:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=k)
    assert (want["log_count"] == 0).any()  # the batch has unobserved codes, so that branch was checked


def test_padding_and_event_order_do_not_change_it():
    batch = random_batch(5)
    base = observation_vector(batch, VOCAB)
    assert base.shape == (4, observation_dim(VOCAB))
    padded = observation_vector(pad_batch(batch, sets=2, events=3, patients=2), VOCAB)
    torch.testing.assert_close(padded[:4], base)
    perm = torch.randperm(batch["codes"].shape[2])
    shuffled = {k: (v[:, :, perm] if v.dim() == 3 else v) for k, v in batch.items()}
    torch.testing.assert_close(observation_vector(shuffled, VOCAB), base)


# ------------------------------------------------------------------------------------------ bounded width


def test_a_code_subset_gives_exactly_those_columns_of_the_full_state():
    """observation_state(..., selected=) drops the other codes' events before the scatter; the columns of the
    kept codes are bit-identical to the full state's (same events, same order of addition), the stay's end
    time (and so "never seen") is unchanged."""
    vocab = 30
    batch = random_batch(7, b=6, s=7, e=6, vocab=vocab)
    batch["codes"][1, 0, :2] = 5  # a repeat within a set, in a kept code
    full = observation_state(batch, vocab)
    selected = torch.tensor([1, 5, 6, 17, 29])
    sub = observation_state(batch, vocab, selected)
    for k in FEATURES:
        assert sub[k].shape == (6, selected.numel())
        assert torch.equal(sub[k], full[k][:, selected - 1]), k
    vec = observation_vector(batch, vocab, selected)
    assert vec.shape == (6, observation_dim(vocab, selected.numel())) == (6, 6 * 5)


def test_the_width_is_every_code_unless_k_is_below_the_vocabulary():
    assert n_observed_codes(39, 0) == n_observed_codes(39, 38) == n_observed_codes(39, 128) == 38
    assert n_observed_codes(39, 37) == 37 and observation_dim(10_001, 128) == 6 * 128


def _reference_stay_counts(codes, set_offsets, patient_offsets, vocab):
    counts = np.zeros(vocab, dtype=np.int64)
    for p in range(len(patient_offsets) - 1):
        lo, hi = set_offsets[patient_offsets[p]], set_offsets[patient_offsets[p + 1]]
        for c in set(codes[lo:hi].tolist()):
            counts[c] += 1
    return counts


def test_code_stay_counts_count_stays_not_events_in_any_chunking():
    rng = np.random.default_rng(0)
    vocab, n_stays = 25, 40
    sets_per_stay = rng.integers(0, 5, n_stays)  # some stays have no set
    patient_offsets = np.concatenate([[0], np.cumsum(sets_per_stay)])
    events_per_set = rng.integers(1, 6, patient_offsets[-1])
    set_offsets = np.concatenate([[0], np.cumsum(events_per_set)])
    codes = rng.zipf(1.5, set_offsets[-1]).clip(1, vocab - 1).astype(np.int32)  # repeats within a stay
    want = _reference_stay_counts(codes, set_offsets, patient_offsets, vocab)
    assert want.max() <= n_stays and (want[1:] > 0).sum() > 5
    for chunk in (1, 7, 64, 1 << 22):
        np.testing.assert_array_equal(code_stay_counts(codes, set_offsets, patient_offsets, vocab, chunk), want)


def test_select_codes_takes_the_most_frequent_ties_to_the_lower_code_in_vocabulary_order():
    counts = np.array([999, 3, 9, 9, 0, 7, 9, 1])  # PAD (index 0) never chosen, whatever its count
    np.testing.assert_array_equal(select_codes(counts, 3), [2, 3, 6])
    np.testing.assert_array_equal(select_codes(counts, 4), [2, 3, 5, 6])
    np.testing.assert_array_equal(select_codes(counts, 6), [1, 2, 3, 5, 6, 7])
    assert select_codes(counts, 0) is None and select_codes(counts, 7) is None and select_codes(counts, 100) is None


def _old_scaler(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaler before streaming (SeqSetVAE.set_observation_scaler): a float64 copy of the whole matrix."""
    d = x.double()
    return d.mean(dim=0).float(), d.std(dim=0).clamp(min=1e-3).float()


@pytest.mark.parametrize("chunk_rows", [1, 3, 64, 1000, 5000])
def test_streamed_moments_equal_the_full_matrix_scaler(chunk_rows):
    """RunningMoments over row chunks: float64 mean / sd equal the full-matrix ones to float64 rounding, and
    the float32 buffers the model keeps are the same numbers (checked bit for bit here); large offsets and
    constant columns included (no cancellation: per-chunk two-pass moments, Chan's merge)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 12, generator=g) * torch.logspace(-3, 3, 12) + torch.linspace(-1e4, 1e4, 12)
    x[:, 3] = 2.5  # constant: sd 0 -> clamped
    m = RunningMoments(12).extend(x.split(chunk_rows))
    d = x.double()
    torch.testing.assert_close(m.mean, d.mean(0), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(m.std(), d.std(0), rtol=1e-10, atol=1e-12)
    old_mean, old_scale = _old_scaler(x)
    assert torch.equal(m.mean.float(), old_mean)
    assert torch.equal(m.std().clamp(min=1e-3).float(), old_scale)


def test_update_rows_reads_a_matrix_in_bounded_chunks():
    x = torch.randn(1000, 6)
    seen = []
    m = RunningMoments(6)
    real_update = m.update
    m.update = lambda c: (seen.append(c.shape[0]), real_update(c))  # type: ignore[method-assign]
    m.update_rows(x, chunk_bytes=8 * 6 * 100)  # 100 rows of float64
    assert seen == [100] * 10
    torch.testing.assert_close(m.std(), x.double().std(0))
