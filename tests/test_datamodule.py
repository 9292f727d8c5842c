"""SetSequenceDataModule: the batch contract, truncation, bucketing, determinism."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from seqsetvae.config import params_from_dict
from seqsetvae.data.batch import PAD_CODE
from seqsetvae.data.datamodule import SetCollator, SetSequenceDataModule, padding_fraction
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data.preprocess import preprocess
from tests.test_preprocess import random_cohort, split_table

N = 240


@pytest.fixture(scope="module")
def fold_dir(tmp_path_factory, base_params_dict):
    events, subjects, labels = random_cohort(N, seed=3, max_sets=60)
    assign = {s: "train" if s <= 160 else "val" if s <= 200 else "test" for s in range(1, N + 1)}
    out = tmp_path_factory.mktemp("processed")
    preprocess(events, subjects, labels, split_table(assign), params_from_dict(base_params_dict).preprocess, out)
    return out / "fold_0"


def _loader(base_params_dict, **kw):
    d = copy.deepcopy(base_params_dict)
    d["loader"].update(kw)
    return params_from_dict(d).loader


def _dm(fold_dir, base_params_dict, **kw):
    dm = SetSequenceDataModule(fold_dir, _loader(base_params_dict, **kw))
    dm.setup("fit")
    return dm


def test_batches_follow_the_contract(fold_dir, base_params_dict):
    dm = _dm(fold_dir, base_params_dict, batch_size=16, max_sets=0, max_events_per_set=0)
    assert dm.vocab_size == 2 + 6  # <pad>, <unk>, V0..V5
    train = dm.split("train")
    seen = []
    for b in dm.train_dataloader():
        B, S, E = b["codes"].shape
        assert b["codes"].dtype == torch.int64 and b["values"].dtype == torch.float32
        assert b["event_mask"].dtype == torch.bool and b["set_mask"].shape == (B, S)
        assert b["set_times"].shape == (B, S) and b["labels"].shape == (B,) and b["subject_id"].dtype == torch.int64
        em, sm = b["event_mask"], b["set_mask"]
        assert torch.equal(b["codes"] != PAD_CODE, em)  # padding is exactly code 0
        assert torch.all(b["values"][~em] == 0) and torch.all(b["set_times"][~sm] == 0)
        assert torch.equal(em.any(-1), sm)  # a real set has at least one real event
        # left-aligned: masks never go False -> True along sets or events
        assert torch.all(sm[:, 1:] <= sm[:, :-1]) and torch.all(em[..., 1:] <= em[..., :-1])
        # sets in strictly increasing time order
        dt = b["set_times"][:, 1:] - b["set_times"][:, :-1]
        assert torch.all(dt[sm[:, 1:]] > 0)
        seen += b["subject_id"].tolist()
        # one patient's batch row equals its packed data
        p = int(np.flatnonzero(train.subject_ids == int(b["subject_id"][0]))[0])
        s0, s1 = train.patient_offsets[p], train.patient_offsets[p + 1]
        e0, e1 = train.set_offsets[s0], train.set_offsets[s0 + 1]
        assert int(sm[0].sum()) == s1 - s0
        assert b["codes"][0, 0, : e1 - e0].tolist() == train.codes[e0:e1].tolist()
        np.testing.assert_array_equal(b["values"][0, 0, : e1 - e0].numpy(), train.values[e0:e1])
        assert b["labels"][0] == train.labels[p]
    assert sorted(seen) == sorted(train.subject_ids.tolist())  # every patient once per epoch


def test_truncation_keeps_last_sets_and_first_events(fold_dir, base_params_dict):
    dm = _dm(fold_dir, base_params_dict, batch_size=8, max_sets=5, max_events_per_set=2)
    train = dm.split("train")
    t = dm.truncation["train"]
    n_sets = train.sets_per_patient()
    assert t["stays_over_max_sets"] == int(np.sum(n_sets > 5)) > 0
    assert t["sets_dropped"] == int(np.sum(n_sets - np.minimum(n_sets, 5)))
    assert t["sets_over_max_events"] > 0
    b = next(iter(dm.val_dataloader()))
    assert b["codes"].shape[1] <= 5 and b["codes"].shape[2] <= 2
    val = dm.split("val")
    p = int(np.flatnonzero(val.subject_ids == int(b["subject_id"][-1]))[0])
    last_set = val.patient_offsets[p + 1] - 1
    n_real = int(b["set_mask"][-1].sum())
    assert b["set_times"][-1, n_real - 1] == val.set_times[last_set]  # the last set is kept


def test_bucketing_reduces_padding(fold_dir, base_params_dict):
    kw = dict(batch_size=8, max_sets=0, max_events_per_set=0)
    bucketed = padding_fraction(_dm(fold_dir, base_params_dict, bucket_size=20, **kw).train_dataloader())
    plain = padding_fraction(_dm(fold_dir, base_params_dict, bucket_size=1, **kw).train_dataloader())
    print(f"padding fraction: bucketed {bucketed:.3f}, unbucketed {plain:.3f}")
    assert bucketed < plain


def test_order_is_deterministic_by_seed(fold_dir, base_params_dict):
    def ids(loader):
        return [b["subject_id"].tolist() for b in loader]

    a = _dm(fold_dir, base_params_dict, batch_size=8, seed=1)
    b = _dm(fold_dir, base_params_dict, batch_size=8, seed=1)
    c = _dm(fold_dir, base_params_dict, batch_size=8, seed=2)
    assert ids(a.train_dataloader()) == ids(b.train_dataloader())
    assert ids(a.train_dataloader()) != ids(c.train_dataloader())
    loader = a.train_dataloader()
    epoch0 = ids(loader)
    loader.batch_sampler.set_epoch(1)
    assert ids(loader) != epoch0  # a new permutation each epoch
    # val/test: a fixed order, the same for any seed and every call
    assert ids(a.val_dataloader()) == ids(c.val_dataloader()) == ids(a.val_dataloader())
    assert ids(a.test_dataloader()) == ids(a.predict_dataloader())


def test_collator_pickles_without_the_arrays(fold_dir, base_params_dict):
    packed = PackedSplit.load(fold_dir / "train")
    coll = SetCollator(fold_dir / "train", 0, 0, packed)
    blob = pickle.dumps(coll)
    assert len(blob) < 1000  # workers map the files themselves
    again = pickle.loads(blob)
    torch.testing.assert_close(again([0, 3, 5]), coll([0, 3, 5]))
