"""Per-variable observation state (seqsetvae/models/observation.py) against a plain-Python reference."""

from __future__ import annotations

import math

import torch

from seqsetvae.models.observation import FEATURES, observation_dim, observation_state, observation_vector
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
