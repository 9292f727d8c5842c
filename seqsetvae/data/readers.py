"""Guarded readers: the one place every stage reads a parquet or CSV input through.

Whatever the file holds, a reader returns the table or raises a `DataError` naming the file (and the line,
for a CSV): a missing file, a folder, a truncated or non-parquet file, a text file given as predictions,
a CSV with an over-long line, bytes that are not UTF-8, or a file too large to be the table it should be.
Never an `ArrowInvalid`, `UnicodeDecodeError` or `csv.Error` traceback, and never an unbounded read:

- parquet: Arrow reads the footer first and refuses a file that has none, so a non-parquet file costs
  a few bytes to refuse;
- CSV (`csv_rows`): only regular files are read (not `/dev/zero`, a FIFO or a folder), their size is
  checked before reading and bounded while reading, and lines are read with a length limit, so a file
  without a newline is refused at its first `MAX_CSV_LINE_BYTES` bytes rather than read whole.

The MEDS source (seqsetvae/data/meds_source.py) keeps its own guarded readers of the same kind (footer
first, then the columns it uses), with MEDS-specific messages.
"""

from __future__ import annotations

import codecs
import csv
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from seqsetvae.errors import DataError

MAX_REASON_CHARS = 200  # of a library's own message quoted in a DataError
MAX_CSV_BYTES = 1 << 30  # 1 GiB: a predefined split CSV of 10 million rows is about 200 MB
MAX_CSV_LINE_BYTES = 4096  # a row `subject_id,fold,split` is under 40 bytes


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."


def _os_reason(e: OSError) -> str:
    return e.strerror or _reason(e)


def _check_file(path: Path, what: str, hint: str = "") -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(path, f"cannot read this {what}: a broken symbolic link") from None
        raise DataError(path, f"{what} not found{hint}") from None
    except OSError as e:
        raise DataError(path, f"cannot read this {what}: {_os_reason(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(path, f"is a folder, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(path, f"not a regular file (a device, FIFO or socket), so not a {what}")


def read_parquet(path: str | Path, columns: list[str] | None = None, what: str = "parquet file",
                 hint: str = "") -> pa.Table:
    """The table in a parquet file (only `columns`, when given). A missing file, a folder, a truncated or
    non-parquet file, or a column the file lacks is a DataError naming the file; `hint` is appended to
    the "not found" message (e.g. ": run the split stage first")."""
    path = Path(path)
    _check_file(path, what, hint)
    try:
        return pq.read_table(path, columns=columns)
    except OSError as e:
        if e.errno is not None:  # an OS error (permission, I/O), not Arrow's "not parquet" (also OSError)
            raise DataError(path, f"cannot read this {what}: {_os_reason(e)}") from None
        raise DataError(path, f"not a readable parquet file ({what}): {_reason(e)}") from None
    except (pa.ArrowException, ValueError) as e:
        raise DataError(path, f"not a readable parquet file ({what}): {_reason(e)}") from None


def read_parquet_pandas(path: str | Path, columns: list[str] | None = None, what: str = "parquet file",
                        hint: str = "") -> Any:
    """`read_parquet` as a pandas DataFrame (as `pandas.read_parquet` gives it)."""
    table = read_parquet(path, columns, what, hint)
    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError) as e:
        raise DataError(path, f"cannot convert this {what} to a table: {_reason(e)}") from None


def read_csv_frame(path: str | Path, what: str, sep: str = ",", hint: str = "") -> Any:
    """A small pipeline-written CSV / TSV (plot data, training curves) as a pandas DataFrame, with the same
    file checks as `csv_rows` (a regular file, at most MAX_CSV_BYTES); a file pandas cannot parse is a
    DataError naming it."""
    import pandas as pd

    path = Path(path)
    _check_file(path, what, hint)
    if os.stat(path).st_size > MAX_CSV_BYTES:
        raise DataError(path, f"larger than {MAX_CSV_BYTES} bytes: not a {what}")
    try:
        return pd.read_csv(path, sep=sep, encoding="utf-8")
    except OSError as e:
        raise DataError(path, f"cannot read this {what}: {_os_reason(e)}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DataError(path, f"not a readable {what}: {_reason(e)}") from None


_BOM = codecs.BOM_UTF8


def _text_lines(path: Path, f: Any, what: str, max_bytes: int, max_line: int) -> Iterator[str]:
    """The file's lines as text, each checked: at most `max_line` bytes, UTF-8 (a BOM at the start is
    dropped, as the PhysioNet reader drops it), no more than `max_bytes` in all."""
    total = 0
    line_no = 0
    while True:
        raw = f.readline(max_line + 1)
        if not raw:
            return
        line_no += 1
        total += len(raw)
        if total > max_bytes:
            raise DataError(path, f"more than {max_bytes} bytes: too large for a {what}", line=line_no)
        if len(raw) > max_line:
            raise DataError(
                path,
                f"a line longer than {max_line} bytes (a cell that large, or no line ends: not a {what})",
                line=line_no,
            )
        if line_no == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                path, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}): save the {what} as "
                "UTF-8 or ASCII", line=line_no,
            ) from None


def csv_rows(path: str | Path, what: str = "CSV file", max_bytes: int = MAX_CSV_BYTES,
             max_line: int = MAX_CSV_LINE_BYTES) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each row of a CSV file, the header row included, in bounded memory.

    Refused with a DataError naming the file (and the line): a path that is not a regular file (a folder,
    `/dev/zero`, a FIFO), a file over `max_bytes`, a line over `max_line` bytes (a huge cell, or a file
    without line ends), bytes that are not UTF-8, a NUL byte, a quoted cell beyond the csv module's field
    size limit. A UTF-8 byte order mark at the start is accepted and dropped."""
    path = Path(path)
    _check_file(path, what)
    try:
        f = open(path, "rb")
        size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise DataError(path, f"cannot read this {what}: {_os_reason(e)}") from None
    with f:
        if size > max_bytes:
            raise DataError(path, f"{size} bytes, more than {max_bytes}: too large for a {what}")
        # Every line is at most `max_line` bytes; a quoted field that spans lines is bounded by the csv
        # module's field size limit (a csv.Error, refused below).
        reader = csv.reader(_text_lines(path, f, what, max_bytes, max_line))
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataError(path, f"not a valid {what}: {_reason(e)}", line=reader.line_num) from None
            except OSError as e:
                raise DataError(path, f"cannot read this {what}: {_os_reason(e)}") from None
            yield reader.line_num, row
