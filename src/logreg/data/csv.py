"""CSV text to numbers with pyarrow, a piece of the file at a time, naming the line and cell where it fails.

A piece is a byte range of the file cut at line starts (about ``PIECE_BYTES`` of text), so a reader holds
one piece whatever the file's size, and worker processes can parse pieces in parallel. pyarrow parses a
piece on all cores, the features straight into float32 (the model's precision) and the label into float64
(so that a label such as 1.0000001 is refused, not rounded to 1). Text is never looked at twice while the
file is good: only when pyarrow refuses a piece is that piece parsed again, on one thread, where pyarrow
reports the row of the first bad line and cell, and the message names the file's line.
"""

# pyarrow rather than polars (the other well-kept multi-threaded reader), measured on the 2-core machine
# (docs/benchmarks.md): polars parsed the 1,000,000 x 32 file fastest, but refuses numbers with spaces around
# them (`1, 2, 0`, which numpy and Python read), fills a row with too few fields with nulls without a word, and
# names a bad cell's column but not its row; pyarrow reads what numpy read, reports the row of every bad line
# and cell, and is fast enough for the targets.

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from logreg.machinery.errors import DataError

PIECE_BYTES = 16 * 2**20  # text per piece: a reader's memory is a few times this
_BLOCK_BYTES = 2**20  # pyarrow's unit of parallel work within a piece
# pyarrow's report of a cell that is not a number, when parsing on one thread (which numbers the rows)
_BAD_CELL = re.compile(r"column #(\d+): Row #(\d+): CSV conversion error to \w+: invalid value '(.*)'$", re.DOTALL)


def piece_ranges(path: Path, piece_bytes: int | None = None) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of about ``piece_bytes`` (default PIECE_BYTES) covering the file; one, empty,
    for an empty file.

    >>> piece_ranges(Path(__file__), piece_bytes=2**40)[0][0]
    0
    """
    piece_bytes = piece_bytes or PIECE_BYTES
    size = path.stat().st_size
    return [(start, min(start + piece_bytes, size)) for start in range(0, max(size, 1), piece_bytes)]


def line_number(path: Path, offset: int) -> int:
    """1-based line number of the byte at ``offset`` (counted only when a message needs it)."""
    count, done = 1, 0
    with path.open("rb") as f:
        while done < offset:
            block = f.read(min(PIECE_BYTES, offset - done))
            if not block:
                break
            count += block.count(b"\n")
            done += len(block)
    return count


def count_lines(path: Path) -> int:
    """Newlines in the file, plus one: at least its number of rows, whatever its lines hold."""
    with path.open("rb") as f:
        return 1 + sum(block.count(b"\n") for block in iter(lambda: f.read(PIECE_BYTES), b""))


def not_utf8(path: Path, byte: int, line: int) -> DataError:
    return DataError(
        f"{path}: is not UTF-8 text (byte 0x{byte:02x} on line {line}, as Latin-1 or Windows-1252 files have); "
        "save it as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)."
    )


def bad_cell(path: Path, header: list[str], label: int | None, column: int, cell: str, line: int) -> DataError:
    """The message for a cell that is not a number.

    >>> str(bad_cell(Path("f.csv"), ["a", "label"], 1, 1, " yes", line=7))
    "f.csv: labels in column 'label' must be 0 or 1, found 'yes' on line 7."
    """
    cell = cell.strip()
    if "_" in cell:  # Python's float() reads 1_000; say why it is refused
        return DataError(
            f"{path}: column {header[column]!r} holds {cell!r} on line {line}; write numbers without digit "
            "separators (1000, not 1_000)."
        )
    if column == label:
        return DataError(f"{path}: labels in column {header[column]!r} must be 0 or 1, found {cell!r} on line {line}.")
    return DataError(f"{path}: column {header[column]!r} holds the non-numeric value {cell!r} on line {line}.")


@dataclass(frozen=True)
class TextPiece:
    """Whole lines of a CSV file: ``data``, which starts at byte ``offset`` of ``path``."""

    path: Path
    data: bytes
    offset: int

    @classmethod
    def read(cls, path: Path, start: int, end: int, skip_header: bool = True) -> TextPiece:
        """The lines that start in bytes [start, end) of the file (the header line never)."""
        with path.open("rb") as f:
            first = start
            if first == 0:
                if skip_header:
                    f.readline()
                    first = f.tell()
            else:
                f.seek(first - 1)
                if f.read(1) != b"\n":  # inside a line: it belongs to the previous piece
                    f.readline()
                    first = f.tell()
            if first >= end:
                return cls(path, b"", first)
            f.seek(first)
            data = f.read(end - first)
            if data and not data.endswith(b"\n"):
                data += f.readline()  # the last line started inside the piece: read it whole
        return cls(path, data, first)

    def row_offsets(self) -> np.ndarray:
        """File offset of each row: the start of every line that is not empty (pyarrow skips empty ones)."""
        text = np.frombuffer(self.data, dtype=np.uint8)
        ends = np.flatnonzero(text == ord("\n"))
        starts = np.concatenate([[0], ends + 1])
        ends = np.concatenate([ends, [len(text)]])
        length = ends - starts
        last = text[np.maximum(ends - 1, 0)] if len(text) else np.zeros(len(ends), np.uint8)
        empty = (length == 0) | ((length == 1) & (last == ord("\r")))
        return self.offset + starts[~empty]

    def line(self, row: int) -> int:
        """The file line of row ``row`` (0-based) of this piece."""
        return line_number(self.path, int(self.row_offsets()[row]))

    def parse(self, header: list[str], label: int | None, float64: bool = False) -> pa.Table:
        """The rows as a pyarrow table of one column per header column, named "0", "1", ...

        Features are float32 (float64 with ``float64``), the label float64. Text that is not numeric CSV
        (a cell that is not a number, a row with the wrong number of fields, bytes that are not UTF-8) raises
        a DataError naming the line and column of the first such row of the piece.
        """
        names = [str(i) for i in range(len(header))]
        types = {name: pa.float64() if float64 or i == label else pa.float32() for i, name in enumerate(names)}
        if not self.data.strip():
            return pa.table({name: pa.array([], type) for name, type in types.items()})
        try:
            return _read(pa.py_buffer(self.data), names, types, threads=True)
        except pa.ArrowInvalid as err:
            reason = str(err).splitlines()[0]
        raise self._first_problem(header, label, names, types, reason)

    def _first_problem(
        self, header: list[str], label: int | None, names: list[str], types: dict, reason: str
    ) -> DataError:
        """The message for the first row of the piece that pyarrow refuses.

        On one thread pyarrow numbers the rows it refuses, but converts a block of rows column by column, so
        the cell it reports may lie below a bad cell further right: parsing the rows above it again finds
        that one, until no earlier row fails.
        """
        try:
            self.data.decode("utf-8")
        except UnicodeDecodeError as err:
            return not_utf8(self.path, self.data[err.start], line_number(self.path, self.offset + err.start))
        buffer, offsets, found = pa.py_buffer(self.data), self.row_offsets() - self.offset, None
        end = len(self.data)
        while end > 0:
            problem = _problem(buffer.slice(0, end), names, types)
            if problem is None:
                break
            found, end = problem, int(offsets[problem[0]])
        if found is None:  # no row to blame: pass on what pyarrow said
            return DataError(f"{self.path}: cannot be read as numeric CSV in the lines from {self.line(0)} ({reason}).")
        row, column, what = found
        line = line_number(self.path, self.offset + int(offsets[row]))
        if column is None:
            return DataError(f"{self.path}: line {line} has {what} fields but the header names {len(header)} columns.")
        return bad_cell(self.path, header, label, column, what, line)


def _read(buffer: pa.Buffer, names: list[str], types: dict, threads: bool, invalid_row=None) -> pa.Table:
    return pacsv.read_csv(
        buffer,
        read_options=pacsv.ReadOptions(column_names=names, use_threads=threads, block_size=_BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(invalid_row_handler=invalid_row),
        # No cell is missing data: "", "NA" or "n/a" are refused as not numbers, and "nan" is the number NaN.
        convert_options=pacsv.ConvertOptions(
            column_types=types, null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False
        ),
    )


def _problem(buffer: pa.Buffer, names: list[str], types: dict) -> tuple[int, int | None, str] | None:
    """(0-based row, column or None, the cell or the number of fields) of what pyarrow refuses on one thread."""
    ragged = []

    def invalid_row(row: pacsv.InvalidRow) -> str:  # a row with the wrong number of fields
        ragged.append(row)
        return "error"

    try:
        _read(buffer, names, types, threads=False, invalid_row=invalid_row)
    except pa.ArrowInvalid as err:
        if ragged and ragged[0].number is not None:
            return ragged[0].number - 1, None, str(ragged[0].actual_columns)
        cell = _BAD_CELL.search(str(err))
        if cell is not None:
            return int(cell[2]) - 1, int(cell[1]), cell[3]
    return None


def rows_of(table: pa.Table, columns: list[int], out: np.ndarray | None = None, dtype: type = np.float32) -> np.ndarray:
    """The given columns of a parsed piece as one (rows, len(columns)) array, in that order, written into
    ``out`` when given.

    Record batch by record batch (about ``_BLOCK_BYTES`` of text each), so the transposition from pyarrow's
    columns to rows stays in the cache: column by column into the whole array took 4 times as long.
    (``to_tensor``, not ``to_numpy``: the latter imports pandas, a second in every process.)
    """
    if out is None:
        out = np.empty((table.num_rows, len(columns)), dtype=dtype)
    start = 0
    for batch in table.select(columns).to_batches():
        end = start + batch.num_rows
        out[start:end] = batch.to_tensor(row_major=True).to_numpy()
        start = end
    return out
