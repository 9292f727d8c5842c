"""The screening gate (issue 29): a residual probe of what the backbone adds beside the observation state.

Its figures must come from what they claim: features that hold the label raise the score over the
observation state alone and over a random backbone; identical features give exactly 0; the same inputs give
the same numbers; the two backbones' encodings must be of the same stays. The sample that bounds its cost is
seeded and fixed.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqsetvae.evaluation.representation import GATE_ROWS, residual_gate, sample_stays


def _split(rng: np.random.Generator, n: int, signal_in_stay: float) -> tuple[dict, dict]:
    """(pretrained encoding, random encoding) of n stays: the observation state holds a weak label signal,
    the pretrained stay features `signal_in_stay` times a strong one, the random ones noise."""
    y = (rng.random(n) < 0.3).astype(np.float32)
    obs = rng.normal(size=(n, 12))
    obs[:, 0] += 0.3 * y
    stay = rng.normal(size=(n, 8))
    stay[:, :3] += signal_in_stay * y[:, None]
    noise = rng.normal(size=(n, 8))
    return {"observation": obs, "stay": stay, "y": y}, {"observation": obs.copy(), "stay": noise, "y": y.copy()}


def test_features_that_hold_the_label_show_a_gain_over_both_controls():
    rng = np.random.default_rng(0)
    train, rtrain = _split(rng, 2000, 1.5)
    val, rval = _split(rng, 1000, 1.5)
    gate = residual_gate(train, val, rtrain, rval, seed=0)
    assert set(GATE_ROWS) <= set(gate)
    for row in GATE_ROWS:
        assert 0.0 <= gate[row]["auroc"] <= 1.0 and 0.0 <= gate[row]["auprc"] <= 1.0
    assert gate["observation"]["n_features"] == 12 and gate["pretrained"]["n_features"] == gate["random"]["n_features"] == 20
    assert gate["pretrained_minus_observation"]["auroc"] > 0.1
    assert gate["pretrained_minus_random"]["auroc"] > 0.1
    assert gate["pretrained_minus_observation"]["auprc"] > 0.1
    # The differences are the rows' own figures subtracted, nothing else.
    assert gate["pretrained_minus_random"]["auroc"] == gate["pretrained"]["auroc"] - gate["random"]["auroc"]
    assert gate["pretrained_minus_observation"]["auprc"] == gate["pretrained"]["auprc"] - gate["observation"]["auprc"]
    # Noise as stay features adds nothing worth the name (a little overfitting at most).
    assert abs(gate["random"]["auroc"] - gate["observation"]["auroc"]) < 0.02
    assert (gate["n_train"], gate["n_val"], gate["val_positives"]) == (2000, 1000, int(val["y"].sum()))


def test_identical_backbone_features_give_exactly_zero_and_the_same_numbers_twice():
    rng = np.random.default_rng(1)
    train, _ = _split(rng, 1500, 1.0)
    val, _ = _split(rng, 500, 1.0)
    same_train = {k: v.copy() for k, v in train.items()}
    same_val = {k: v.copy() for k, v in val.items()}
    gate = residual_gate(train, val, same_train, same_val, seed=0)
    assert gate["pretrained_minus_random"] == {"auroc": 0.0, "auprc": 0.0}
    assert gate["pretrained"] == gate["random"]
    assert residual_gate(train, val, same_train, same_val, seed=0) == gate  # deterministic


def test_stay_features_without_the_label_do_not_show_a_gain():
    rng = np.random.default_rng(2)
    train, rtrain = _split(rng, 2000, 0.0)
    val, rval = _split(rng, 1000, 0.0)
    gate = residual_gate(train, val, rtrain, rval, seed=0)
    assert abs(gate["pretrained_minus_observation"]["auroc"]) < 0.02
    assert abs(gate["pretrained_minus_random"]["auroc"]) < 0.03


def test_one_class_gives_none_not_a_crash():
    rng = np.random.default_rng(3)
    train, rtrain = _split(rng, 200, 1.0)
    val, rval = _split(rng, 50, 1.0)
    val["y"][:] = 0
    rval["y"][:] = 0
    gate = residual_gate(train, val, rtrain, rval, seed=0)
    assert gate["pretrained"]["auroc"] is None and gate["pretrained_minus_random"]["auroc"] is None


def test_encodings_of_other_stays_are_refused():
    rng = np.random.default_rng(4)
    train, rtrain = _split(rng, 200, 1.0)
    val, rval = _split(rng, 100, 1.0)
    rval["observation"] = rval["observation"][::-1].copy()
    with pytest.raises(ValueError, match="not of the same stays"):
        residual_gate(train, val, rtrain, rval, seed=0)


def test_the_stay_sample_is_seeded_fixed_and_bounded():
    assert sample_stays(100, 0) is None and sample_stays(100, 100) is None and sample_stays(100, 500) is None
    a = sample_stays(10_000, 300)
    assert a is not None and a.size == 300 and np.unique(a).size == 300
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 10_000
    assert np.array_equal(a, sample_stays(10_000, 300))
    assert not np.array_equal(a, sample_stays(10_000, 300, seed=1))
