"""The packed format: one split of one fold as flat arrays, each saved as a `.npy` file.

A cohort of P samples ("patients" below: a sample is one prediction for one subject, its input the
subject's events in the window that ends at the prediction time) with S sets and E events in all is stored as (CSR-style, two levels):

    codes            int32   [E]    vocabulary index of each event (never 0 = <pad>)
    values           float32 [E]    normalised value (0 for value-less events)
    set_offsets      int64   [S+1]  events of set s are codes[set_offsets[s]:set_offsets[s+1]]
    set_times        float32 [S]    hours since admission of set s
    patient_offsets  int64   [P+1]  sets of patient p are set_offsets[patient_offsets[p]:patient_offsets[p+1]]
    subject_ids      int64   [P]    the sample's subject (a subject may have several samples)
    labels           float32 [P]    outcome 0/1
    prediction_times int64   [P]    the sample's prediction time, microseconds since the Unix epoch

Sets of a patient are in time order; every set holds at least one event, every patient at least one set.
The folder also holds `meta.json` (format version, counts); `load` checks every file against it so a
truncated or corrupt file is reported by name instead of surfacing later as a wrong batch. Arrays load with
`np.load(mmap_mode="r")`, so a DataLoader worker touches only the pages of the patients it batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path

FORMAT_VERSION = 2  # 2: prediction_times (a sample is keyed by subject and prediction time)
META_FILE = "meta.json"

# array name -> (dtype, which count gives its length, extra length)
_LAYOUT: dict[str, tuple[np.dtype, str, int]] = {
    "codes": (np.dtype(np.int32), "n_events", 0),
    "values": (np.dtype(np.float32), "n_events", 0),
    "set_offsets": (np.dtype(np.int64), "n_sets", 1),
    "set_times": (np.dtype(np.float32), "n_sets", 0),
    "patient_offsets": (np.dtype(np.int64), "n_patients", 1),
    "subject_ids": (np.dtype(np.int64), "n_patients", 0),
    "labels": (np.dtype(np.float32), "n_patients", 0),
    "prediction_times": (np.dtype(np.int64), "n_patients", 0),
}


@dataclass(frozen=True)
class PackedSplit:
    codes: np.ndarray
    values: np.ndarray
    set_offsets: np.ndarray
    set_times: np.ndarray
    patient_offsets: np.ndarray
    subject_ids: np.ndarray
    labels: np.ndarray
    # None (hand-built splits in tests and notebooks): every sample at time 0
    prediction_times: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.prediction_times is None:
            object.__setattr__(self, "prediction_times", np.zeros(len(self.subject_ids), dtype=np.int64))

    # ---- sizes -----------------------------------------------------------------------------------
    @property
    def n_events(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_sets(self) -> int:
        return int(self.set_times.shape[0])

    @property
    def n_patients(self) -> int:
        return int(self.subject_ids.shape[0])

    def sets_per_patient(self) -> np.ndarray:
        return np.diff(self.patient_offsets)

    def events_per_set(self) -> np.ndarray:
        return np.diff(self.set_offsets)

    def counts(self) -> dict[str, int]:
        return {"n_patients": self.n_patients, "n_sets": self.n_sets, "n_events": self.n_events}

    # ---- checks ----------------------------------------------------------------------------------
    def check(self, where: str | Path | None = None) -> None:
        """Structural invariants (dtypes, lengths, offsets); raises DataError naming `where`."""
        n = self.counts()
        for name, (dtype, count, extra) in _LAYOUT.items():
            arr = getattr(self, name)
            if arr.dtype != dtype or arr.ndim != 1 or arr.shape[0] != n[count] + extra:
                raise DataError(
                    where, f"array '{name}' is {arr.dtype}{list(arr.shape)}, expected {dtype}[{count}+{extra}]"
                )
        for name, total in (("set_offsets", self.n_events), ("patient_offsets", self.n_sets)):
            off = getattr(self, name)
            # Offsets are small (sets / patients, not events): a full monotonicity check is cheap.
            if off[0] != 0 or off[-1] != total or np.any(np.diff(off) <= 0):
                raise DataError(where, f"'{name}' must rise strictly from 0 to {total} (no empty set or patient)")

    # ---- IO --------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write the arrays and meta.json into `directory`, atomically (replacing it whole)."""
        self.check(directory)
        meta = {"format_version": FORMAT_VERSION, **self.counts()}
        with atomic_path(directory, is_dir=True) as tmp:
            for f in fields(self):
                np.save(tmp / f"{f.name}.npy", np.ascontiguousarray(getattr(self, f.name)), allow_pickle=False)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> PackedSplit:
        """Load a split saved by `save`; `mmap=True` maps the files read-only instead of reading them."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(meta_path, "missing: not a packed split (run the preprocess stage)") from None
        except (OSError, ValueError) as e:
            raise DataError(meta_path, f"unreadable: {e}") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else None
            raise DataError(meta_path, f"format_version {got!r}, this code reads {FORMAT_VERSION}: rerun preprocess")
        arrays = {}
        for name, (dtype, count, extra) in _LAYOUT.items():
            path = directory / f"{name}.npy"
            try:
                arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except FileNotFoundError:
                raise DataError(path, "missing") from None
            except (OSError, ValueError, EOFError) as e:  # truncated header or data, not an .npy file
                raise DataError(path, f"corrupt or truncated .npy file: {e}") from None
            expected = int(meta[count]) + extra
            if arr.dtype != dtype or arr.shape != (expected,):
                raise DataError(path, f"holds {arr.dtype}{list(arr.shape)}, meta.json says {dtype}[{expected}]")
            arrays[name] = arr
        packed = cls(**arrays)
        packed.check(directory)
        return packed


class PackedSplitWriter:
    """Write one packed split piece by piece (shard by shard) in bounded memory, as `PackedSplit.save`
    would write the whole: the same `.npy` files, byte for byte, and the same meta.json.

    The counts must be known up front (the `.npy` header holds the length); pieces are appended in
    patient order, each with its offsets relative to itself (starting at 0, as a `PackedSplit` of its
    own). Writes into an existing folder (the caller's atomic output folder); `close` checks that exactly
    the announced counts were written.
    """

    def __init__(self, directory: str | Path, n_patients: int, n_sets: int, n_events: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True)
        self.expected = {"n_patients": int(n_patients), "n_sets": int(n_sets), "n_events": int(n_events)}
        self.written = {"n_patients": 0, "n_sets": 0, "n_events": 0}
        self._files = {}
        for name, (dtype, count, extra) in _LAYOUT.items():
            f = open(self.directory / f"{name}.npy", "wb")  # noqa: SIM115 (closed in close())
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": (self.expected[count] + extra,)}  # fmt: skip
            np.lib.format.write_array_header_1_0(f, header)  # what np.save writes for a 1-D array
            self._files[name] = f
        for name in ("set_offsets", "patient_offsets"):
            self._write(name, np.zeros(1, dtype=np.int64))

    def _write(self, name: str, arr: np.ndarray) -> None:
        self._files[name].write(np.ascontiguousarray(arr, dtype=_LAYOUT[name][0]).tobytes())

    def append(self, piece: PackedSplit) -> None:
        piece.check(self.directory)
        for name in _LAYOUT:
            arr = getattr(piece, name)
            if name == "set_offsets":
                arr = arr[1:] + self.written["n_events"]
            elif name == "patient_offsets":
                arr = arr[1:] + self.written["n_sets"]
            self._write(name, arr)
        for k, v in piece.counts().items():
            self.written[k] += v

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        if self.written != self.expected:
            raise AssertionError(f"{self.directory}: wrote {self.written}, announced {self.expected}")
        meta = {"format_version": FORMAT_VERSION, **self.written}
        (self.directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
