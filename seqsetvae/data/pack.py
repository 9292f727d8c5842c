"""Packing: one shard's windowed, normalised events into the packed pieces of its samples.

`ShardLayout` holds the per-subject / per-set sizes of a shard's events and each sample's extent;
`pack_samples` cuts the packed piece (packed.py's format) of chosen samples: each sample's sets (its
window), set times in hours since its window start, its events. A set inside two samples' windows is packed
in both. Pieces are appended in shard order by `PackedSplitWriter`.
"""

from __future__ import annotations

import numpy as np

from seqsetvae.data.canonical import US_PER_HOUR
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data.windows import CohortEvents, lookup

class ShardLayout:
    """Per-subject / per-set sizes and owners of one shard's events, and each sample's packed extent."""

    def __init__(self, ev: CohortEvents):
        self.subject_ids = ev.subject_ids
        self.sets_per_subject = np.diff(ev.subject_set_offsets)
        self.events_per_subject = ev.events_per_subject()
        self.events_per_set = np.diff(ev.set_offsets)
        self.event_subject = np.repeat(np.arange(ev.subject_ids.size), self.events_per_subject)
        lo, hi = ev.sample_sets
        self.sample_sets = hi - lo
        self.sample_events = ev.set_offsets[hi] - ev.set_offsets[lo]

    @staticmethod
    def split_of(ids: np.ndarray, split_code: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(split code per queried subject, -1 for one not in this fold; whether in the fold)."""
        pos, found = lookup(ids, query)
        return np.where(found, split_code[pos], -1), found


def ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The concatenated integer ranges lo[i]:hi[i] (vectorised; empty ranges give nothing)."""
    n = hi - lo
    total = int(n.sum())
    starts = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n)
    return starts + np.arange(total, dtype=np.int64)


def pack_samples(ev: CohortEvents, layout: ShardLayout, which: np.ndarray, tokens: np.ndarray,
          values: np.ndarray) -> PackedSplit:  # fmt: skip
    """The packed piece of the samples `which` (positions, in order): each sample's sets (its window), times
    in hours since its window start, its events. A set in two samples' windows is packed in both."""
    lo, hi = ev.sample_sets
    sets = ranges(lo[which], hi[which])
    events = ranges(ev.set_offsets[sets], ev.set_offsets[sets + 1])
    start = np.repeat(ev.sample_lower_us[which], layout.sample_sets[which])
    return PackedSplit(
        codes=tokens[events],
        values=values[events],
        set_offsets=np.concatenate([[0], np.cumsum(layout.events_per_set[sets])]).astype(np.int64),
        set_times=((ev.set_time_us[sets] - start) / US_PER_HOUR).astype(np.float32),
        patient_offsets=np.concatenate([[0], np.cumsum(layout.sample_sets[which])]).astype(np.int64),
        subject_ids=ev.samples.subject_id[which],
        labels=ev.samples.label[which].astype(np.float32),
        prediction_times=ev.samples.prediction_us[which],
    )


