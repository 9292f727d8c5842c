"""Packing: one shard's windowed, normalised events into the packed pieces of its samples.

`ShardLayout` holds the per-subject / per-set sizes of a shard's events and each sample's extent;
`pack_samples` cuts the packed piece (packed.py's format) of chosen samples: each sample's sets (its
window), set times in hours since its window start, its events. A set inside two samples' windows is packed
in both. Pieces are appended in shard order by `PackedSplitWriter`.
"""

from __future__ import annotations

import numpy as np

from seqsetvae.data.canonical import US_PER_HOUR, ranges
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data.windows import CohortEvents, lookup


class ShardLayout:
    """Per-subject / per-set sizes and owners of one shard's events, and each sample's packed extent (with
    descriptors, a sample whose first set does not lie at its window start has one set more: theirs)."""

    def __init__(self, ev: CohortEvents):
        self.subject_ids = ev.subject_ids
        self.sets_per_subject = np.diff(ev.subject_set_offsets)
        self.events_per_subject = ev.events_per_subject()
        self.events_per_set = np.diff(ev.set_offsets)
        self.event_subject = np.repeat(np.arange(ev.subject_ids.size), self.events_per_subject)
        lo, hi = ev.sample_sets
        self.sample_sets = hi - lo
        self.sample_events = ev.set_offsets[hi] - ev.set_offsets[lo]
        d = ev.descriptors
        if d is not None:
            n_desc = np.diff(d.offsets)
            self.sample_sets = self.sample_sets + ((n_desc > 0) & ~d.joins_first_set)
            self.sample_events = self.sample_events + n_desc

    @staticmethod
    def split_of(ids: np.ndarray, split_code: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(split code per queried subject, -1 for one not in this fold; whether in the fold)."""
        pos, found = lookup(ids, query)
        return np.where(found, split_code[pos], -1), found


def pack_samples(ev: CohortEvents, layout: ShardLayout, which: np.ndarray, tokens: np.ndarray,
                 values: np.ndarray, descriptors: tuple[np.ndarray, np.ndarray] | None = None) -> PackedSplit:  # fmt: skip
    """The packed piece of the samples `which` (positions, in order): each sample's sets (its window), times
    in hours since its window start, its events. A set in two samples' windows is packed in both.
    `descriptors`: (tokens, values) of ev.descriptors' events, which open each sample's first set."""
    lo, hi = ev.sample_sets
    if ev.descriptors is None:
        sets = ranges(lo[which], hi[which])
        events = ranges(ev.set_offsets[sets], ev.set_offsets[sets + 1])
        start = np.repeat(ev.sample_lower_us[which], layout.sample_sets[which])
        set_sizes, set_times = layout.events_per_set[sets], (ev.set_time_us[sets] - start) / US_PER_HOUR
        codes, vals = tokens[events], values[events]
    else:
        codes, vals, set_sizes, set_times = _with_descriptors(ev, layout, which, tokens, values, descriptors)
    return PackedSplit(
        codes=codes,
        values=vals,
        set_offsets=np.concatenate([[0], np.cumsum(set_sizes)]).astype(np.int64),
        set_times=set_times.astype(np.float32),
        patient_offsets=np.concatenate([[0], np.cumsum(layout.sample_sets[which])]).astype(np.int64),
        subject_ids=ev.samples.subject_id[which],
        labels=ev.samples.label[which].astype(np.float32),
        prediction_times=ev.samples.prediction_us[which],
    )


def _with_descriptors(ev: CohortEvents, layout: ShardLayout, which: np.ndarray, tokens: np.ndarray,
                      values: np.ndarray, descriptors: tuple[np.ndarray, np.ndarray]):  # fmt: skip
    """(codes, values, set sizes, set times in hours) of the samples `which`, each opened by its descriptor
    set: its descriptor events merged by code with its first set's events when that set lies at its window
    start (stable: that set's own order is kept, and descriptor codes never equal data codes), else alone at
    hour 0; then its other sets. Vectorised: the first sets and the rest are each built in sample order and
    interleaved by one stable sort on (sample, first or rest)."""
    d = ev.descriptors
    d_tokens, d_values = descriptors
    lo, hi = ev.sample_sets[0][which], ev.sample_sets[1][which]
    pos = np.arange(which.size)
    n_desc = (d.offsets[which + 1] - d.offsets[which])
    joins = d.joins_first_set[which]
    # The descriptor sets: the samples' descriptor events and, where it joins, their first set's events.
    d_events = ranges(d.offsets[which], d.offsets[which + 1])
    joined = ranges(ev.set_offsets[lo[joins]], ev.set_offsets[lo[joins] + 1])
    n_joined = np.zeros(which.size, dtype=np.int64)
    n_joined[joins] = layout.events_per_set[lo[joins]]
    block = np.r_[np.repeat(pos[joins], n_joined[joins]), np.repeat(pos, n_desc)]
    block_code = np.r_[ev.code[joined], d.code[d_events]]
    o = np.lexsort((block_code, block))
    first_codes = np.r_[tokens[joined], d_tokens[d_events]][o]
    first_vals = np.r_[values[joined], d_values[d_events]][o]
    has_desc = n_desc > 0
    first_size = (n_desc + np.where(joins, n_joined, 0))[has_desc]
    # The other sets of each sample: from its second set on where the first took the descriptors.
    rest = ranges(lo + joins, hi)
    rest_events = ranges(ev.set_offsets[rest], ev.set_offsets[rest + 1])
    n_rest_sets = hi - (lo + joins)
    rest_set_pos = np.repeat(pos, n_rest_sets)
    rest_event_pos = np.repeat(rest_set_pos, layout.events_per_set[rest])
    # Interleave: per sample, its descriptor set first (key 2 * sample), then its other sets (2 * sample + 1).
    event_order = np.argsort(np.r_[2 * block[o], 2 * rest_event_pos + 1], kind="stable")
    set_order = np.argsort(np.r_[2 * pos[has_desc], 2 * rest_set_pos + 1], kind="stable")
    lower = ev.sample_lower_us[which]
    rest_times = (ev.set_time_us[rest] - lower[rest_set_pos]) / US_PER_HOUR
    return (
        np.r_[first_codes, tokens[rest_events]][event_order],
        np.r_[first_vals, values[rest_events]][event_order],
        np.r_[first_size, layout.events_per_set[rest]][set_order],
        np.r_[np.zeros(int(has_desc.sum())), rest_times][set_order],
    )
