"""A fold's train values as exact (code, float32 value) counts: counted per shard, kept on disk, merged code
range by code range.

The exact statistics (stats.fit_fold: quantiles by position, sums in the order of the sorted values) need
every distinct train value of a code with its count. Held for every code at once, that grows with the
cohort's distinct (code, value) pairs, as many as the values when a source records them at full precision.
So a scan job writes its shard's counts sorted by (code, value) with per-code offsets (`TrainValueCounts.save`,
plain .npy files), and the fit reads them back a range of codes at a time (`merged_batches`): each shard's
entries of those codes with one positioned read per file (never mapped, never read whole), merged across
shards and handed to the statistics, then dropped. The fit's memory is that of one batch: at most
`BATCH_ENTRIES` entries, or one code's distinct values where a code has more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from seqsetvae.errors import DataError

BATCH_ENTRIES = 1 << 22  # entries (distinct (code, value) pairs of one shard) merged at once, unless one code has more
FILES = ("value_bits.npy", "value_counts.npy", "value_offsets.npy")  # <prefix>.<name> in a scan folder
_DTYPES = (np.dtype(np.uint32), np.dtype(np.int64), np.dtype(np.int64))
_FIX = "rerun the preprocess_scan stage"


def sortable_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> int64 in [0, 2^32) whose order is the numeric order of the values (NaN excluded)."""
    u = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    return np.where(u & 0x80000000, ~u, u | 0x80000000).astype(np.int64)


def from_sortable_bits(bits: np.ndarray) -> np.ndarray:
    return np.where(bits & 0x80000000, bits & 0x7FFFFFFF, ~bits).astype(np.uint32).view(np.float32)


class TrainValueCounts:
    """One shard's train values of one fold as exact counts: how often each distinct (code, float32 value)
    occurs. Built in memory by `add` (several calls merge), written by `save`. `code` ids are the shard's
    (positions in its sorted code names); value-less events are not counted here."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)  # code << 32 | order-preserving bits of the value, sorted
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, code: np.ndarray, value: np.ndarray) -> None:
        keys, counts = np.unique((code.astype(np.int64) << 32) | sortable_bits(value), return_counts=True)
        if self.keys.size:
            keys, inv = np.unique(np.concatenate([self.keys, keys]), return_inverse=True)
            counts = np.bincount(inv, weights=np.concatenate([self.counts, counts]), minlength=keys.size)
        self.keys, self.counts = keys, counts.astype(np.int64)

    def save(self, directory: Path, prefix: str, n_codes: int) -> None:
        """`<prefix>.value_bits.npy` (uint32, the value's sortable bits), `.value_counts.npy` (int64) in
        (code, value) order, and `.value_offsets.npy` (int64 [n_codes + 1]: code c's entries are
        offsets[c]:offsets[c+1])."""
        offsets = np.searchsorted(self.keys >> 32, np.arange(n_codes + 1)).astype(np.int64)
        bits = (self.keys & 0xFFFFFFFF).astype(np.uint32)
        for name, array in zip(FILES, (bits, self.counts, offsets)):
            np.save(directory / f"{prefix}.{name}", array, allow_pickle=False)


class _NpyFile:
    """A 1-D .npy file read by positioned reads of element ranges (its header checked once)."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype = path, dtype
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                header = {(1, 0): np.lib.format.read_array_header_1_0,
                          (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
                if header is None:
                    raise ValueError(f".npy format version {version} not written by this project")
                shape, fortran, file_dtype = header(f)
                self.start = f.tell()
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise DataError(path, f"missing: {_FIX}") from None
        except (OSError, ValueError) as e:
            raise DataError(path, f"unreadable ({e}): {_FIX}") from None
        if file_dtype != dtype or len(shape) != 1 or fortran:
            raise DataError(path, f"holds {file_dtype} {shape}, not a 1-D {dtype} array: {_FIX}")
        self.size = int(shape[0])
        if size < self.start + self.size * dtype.itemsize:
            raise DataError(path, f"truncated: {size} bytes for {self.size} {dtype} values: {_FIX}")

    def read(self, lo: int, hi: int) -> np.ndarray:
        n = (hi - lo) * self.dtype.itemsize
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), n, self.start + lo * self.dtype.itemsize)
        if len(data) != n:
            raise DataError(self.path, f"truncated while reading: {_FIX}")
        return np.frombuffer(data, dtype=self.dtype)


class ValueCountsFile:
    """One shard's `TrainValueCounts` as saved: the offsets held (one int64 per code of the shard), the
    entries read on demand, a code range at a time."""

    def __init__(self, directory: Path, prefix: str) -> None:
        bits, counts, offsets = (_NpyFile(directory / f"{prefix}.{name}", dt) for name, dt in zip(FILES, _DTYPES))
        self.bits, self.counts = bits, counts
        self.offsets = offsets.read(0, offsets.size)
        if (self.offsets.size == 0 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0)
                or self.offsets[-1] != bits.size or bits.size != counts.size):  # fmt: skip
            raise DataError(offsets.path, f"offsets do not match {bits.path.name} / {counts.path.name}: {_FIX}")

    @property
    def n_codes(self) -> int:
        return self.offsets.size - 1

    def read(self, first: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(value bits, counts) of codes first .. end-1, in (code, value) order."""
        lo, hi = int(self.offsets[first]), int(self.offsets[end])
        return self.bits.read(lo, hi), self.counts.read(lo, hi)


@dataclass(frozen=True)
class ValueBatch:
    """The merged train values of the codes first .. end-1 (the fold's code positions): per distinct
    (code, value) pair, sorted by code then value."""

    first: int
    end: int
    code: np.ndarray  # int64, relative to `first`
    value: np.ndarray  # float64 (exactly the float32 value)
    count: np.ndarray  # int64


def merged_batches(parts: Sequence[tuple[ValueCountsFile, np.ndarray]], n_codes: int,
                   budget: int | None = None) -> Iterator[ValueBatch]:  # fmt: skip
    """The shards' counts merged, in batches of consecutive codes that cover 0 .. n_codes-1 in order.

    `parts`: per shard its counts and `code_map`, the fold's code position of each of its codes (increasing:
    both are lexical orders). A batch holds at most `budget` (default BATCH_ENTRIES) shard entries, or a single
    code whose entries alone are more."""
    budget = BATCH_ENTRIES if budget is None else budget
    entries = np.zeros(n_codes, np.int64)  # shard entries per code: what a batch will read
    for counts, code_map in parts:
        entries[code_map] += np.diff(counts.offsets)
    cum = np.cumsum(entries)
    first = 0
    while first < n_codes:
        before = int(cum[first - 1]) if first else 0
        end = max(int(np.searchsorted(cum, before + budget, side="right")), first + 1)
        yield _merge(parts, first, end)
        first = end


def _merge(parts: Sequence[tuple[ValueCountsFile, np.ndarray]], first: int, end: int) -> ValueBatch:
    keys, counts = [], []
    for part, code_map in parts:
        lo, hi = np.searchsorted(code_map, [first, end])
        if part.offsets[hi] == part.offsets[lo]:
            continue
        bits, n = part.read(int(lo), int(hi))
        code = np.repeat(code_map[lo:hi] - first, np.diff(part.offsets[lo : hi + 1]))
        keys.append((code << 32) | bits.astype(np.int64))
        counts.append(n)
    if not keys:
        empty = np.zeros(0, np.int64)
        return ValueBatch(first, end, empty, np.zeros(0), empty)
    n_parts = len(keys)
    key, count = np.concatenate(keys), np.concatenate(counts)
    del keys, counts  # (one code's entries can be most of a batch: hold them once)
    if n_parts > 1:
        # every part is sorted and distinct: a stable sort merges the runs; equal keys (the same pair in
        # several shards) then sum their counts
        order = np.argsort(key, kind="stable")
        key, count = key[order], count[order]
        del order
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        key, count = key[starts], np.add.reduceat(count, starts)
    return ValueBatch(first, end, key >> 32, from_sortable_bits((key & 0xFFFFFFFF).astype(np.uint32)).astype(np.float64), count)
