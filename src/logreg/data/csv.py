"""CSV text to numbers with polars, a piece of the file at a time, naming the line and cell where it fails.

A piece is a byte range of the file cut at line starts (about ``PIECE_BYTES`` of text), so a reader holds
one piece whatever the file's size. polars parses a piece on all cores, the features straight into float32
(the model's precision) and the label into float64 (so that a label such as 1.0000001 is refused, not
rounded to 1). A cell is a number when polars reads its text, stripped of spaces, as one: numbers with
spaces before them are parsed at full speed, a piece with spaces after a number is read again as text and
stripped. Text is never looked at twice while the file is good: only a piece that fails is scanned again, by
Python's csv module, and its first bad line and cell (in file order) named with its line in the file.
"""

# polars rather than pyarrow, by measurement (docs/benchmarks.md; both are well kept and multi-threaded): on
# the 2-core machine polars read the 1,000,000 x 32 file 2.6x as fast as pyarrow (1.4 s against 3.6 s, best of
# three), faster than pandas (1.8 s), and 5x as fast as numpy.loadtxt, where pyarrow was 1.9x (short of the
# 3x the issue asked for). What polars does not do, this module does: it reports a bad cell's column but not
# its row (found by scanning that one piece), and refuses spaces after a number (the piece is stripped).

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from logreg.machinery.errors import DataError

PIECE_BYTES = 16 * 2**20  # text per piece: a reader's memory is a few times this


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


def unreadable_line(path: Path, line: int, err: csv.Error, what: str) -> DataError:
    """The message for a line Python's csv module cannot split into fields (``what`` a field should hold).

    >>> str(unreadable_line(Path("f.csv"), 1, csv.Error("field larger than field limit (131072)"), "a column name"))
    'f.csv: line 1 has a field of more than 131,072 characters, too long for a column name.'
    """
    if "field limit" in str(err):
        return DataError(
            f"{path}: line {line} has a field of more than {csv.field_size_limit():,} characters, too long for {what}."
        )
    if "new-line character" in str(err):
        return DataError(
            f"{path}: line {line} holds a carriage return (\\r) inside a field: are its lines ended by \\r alone, "
            "as in old Mac files? Save it with \\n or \\r\\n line ends."
        )
    return DataError(f"{path}: line {line} cannot be split into fields ({err}).")


def shown(cell: str, limit: int = 40) -> str:
    """A cell as a message quotes it: whole when short, else its start and its length.

    >>> shown("x" * 100)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' (100 characters)"
    """
    if len(cell) <= limit:
        return repr(cell)
    start = repr(cell[:limit])
    return f"{start[:-1]}...{start[-1]} ({len(cell):,} characters)"


def bad_cell(path: Path, header: list[str], label: int | None, column: int, cell: str, line: int) -> DataError:
    """The message for a cell that is not a number.

    >>> str(bad_cell(Path("f.csv"), ["a", "label"], 1, 1, " yes", line=7))
    "f.csv: labels in column 'label' must be 0 or 1, found 'yes' on line 7."
    """
    cell = cell.strip()
    if "_" in cell:  # Python's float() reads 1_000; say why it is refused
        return DataError(
            f"{path}: column {header[column]!r} holds {shown(cell)} on line {line}; write numbers without digit "
            "separators (1000, not 1_000)."
        )
    if column == label:
        return DataError(
            f"{path}: labels in column {header[column]!r} must be 0 or 1, found {shown(cell)} on line {line}."
        )
    return DataError(f"{path}: column {header[column]!r} holds the non-numeric value {shown(cell)} on line {line}.")


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
        body = data.lstrip(b"\r\n")  # polars counts the columns on the first line: start at a row
        return cls(path, body, first + len(data) - len(body))

    def row_offsets(self) -> np.ndarray:
        """File offset of each row: the start of every line that is not empty (empty lines are not rows)."""
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

    def parse(self, header: list[str], label: int | None, float64: bool = False) -> pl.DataFrame:
        """The rows as a frame of one column per header column, named "0", "1", ...; empty lines left out.

        Features are float32 (float64 with ``float64``), the label float64. Text that is not numeric CSV
        (a cell that is not a number, a row with the wrong number of fields, bytes that are not UTF-8) raises
        a DataError naming the line and column of the first such row of the piece.
        """
        names = [str(i) for i in range(len(header))]
        types = {name: pl.Float64 if float64 or i == label else pl.Float32 for i, name in enumerate(names)}
        if not self.data.strip():
            return pl.DataFrame(schema=types)
        frame = _read(self.data, names, types)
        if frame is None:  # maybe numbers with spaces after them: read the cells as text, stripped
            frame = _read(self.data, names, {name: pl.String for name in names}, strip_to=types)
        frame = None if frame is None else self._without_empty_lines(frame)
        if frame is None:
            raise self._first_problem(header, label, types)
        return frame

    def _without_empty_lines(self, frame: pl.DataFrame) -> pl.DataFrame | None:
        """The frame without the rows of empty lines (all null); None when another cell is missing."""
        if not sum(frame.null_count().row(0)):
            return frame
        empty = frame.select(pl.all_horizontal(pl.all().is_null())).to_series()
        some = frame.select(pl.any_horizontal(pl.all().is_null())).to_series()
        # a row of empty cells (",,") is all null too, but not an empty line: the counts tell them apart
        if (some != empty).any() or len(self.row_offsets()) != len(frame) - empty.sum():
            return None
        return frame.filter(~empty)

    def _first_problem(self, header: list[str], label: int | None, types: dict) -> DataError:
        """The message for the first bad line of the piece, found by scanning this piece alone.

        Python's csv module splits the lines into cells (and says which line each row is on); polars judges
        the cells, column by column, as the parse does.
        """
        try:
            text = self.data.decode("utf-8")
        except UnicodeDecodeError as err:
            return not_utf8(self.path, self.data[err.start], line_number(self.path, self.offset + err.start))
        first = line_number(self.path, self.offset)
        rows, lines, ragged, unsplit = [], [], None, None
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            for row in reader:
                if not row:  # an empty line
                    continue
                if len(row) != len(header):
                    ragged = (reader.line_num, len(row))
                    break
                rows.append(row)
                lines.append(reader.line_num)
        except csv.Error as err:  # a field longer than the csv module takes, say; a row before it may be bad too
            unsplit = unreadable_line(self.path, first + reader.line_num - 1, err, "a number")
        bad = None  # (row, column) of the first cell polars does not read as a number
        if rows:
            cells = pl.DataFrame([list(column) for column in zip(*rows, strict=True)], schema=list(types), orient="col")
            numbers = cells.select(
                pl.col(n).str.strip_chars().cast(t, strict=False).is_null() for n, t in types.items()
            )
            rows_bad = numbers.select(pl.any_horizontal(pl.all())).to_series().arg_true()
            if len(rows_bad):
                row = int(rows_bad[0])
                bad = row, int(np.argmax(numbers.row(row)))
        if bad is not None:
            row, column = bad
            return bad_cell(self.path, header, label, column, rows[row][column], first + lines[row] - 1)
        if unsplit is not None:
            return unsplit
        if ragged is not None:
            line, fields = ragged
            return DataError(
                f"{self.path}: line {first + line - 1} has {fields} fields but the header names {len(header)} columns."
            )
        return DataError(f"{self.path}: cannot be read as numeric CSV in the lines from {first}.")


def _read(data: bytes, names: list[str], types: dict, strip_to: dict | None = None) -> pl.DataFrame | None:
    """The piece parsed by polars; None when polars refuses it. With ``strip_to``, the cells are read as text,
    stripped of spaces and cast to those types."""
    try:
        frame = pl.read_csv(data, has_header=False, new_columns=names, schema=types)
        if strip_to is not None:
            frame = frame.select(pl.col(n).str.strip_chars().cast(t) for n, t in strip_to.items())
    except pl.exceptions.PolarsError:
        return None
    return frame


def rows_of(frame: pl.DataFrame, columns: list[int], out: np.ndarray | None = None) -> np.ndarray:
    """The given columns of a parsed piece as one (rows, len(columns)) array in that order, of the columns'
    type (float32 features, float64 when parsed so), written into ``out`` when given."""
    rows = frame.select(frame.columns[c] for c in columns).to_numpy(order="c")
    if out is None:
        return rows
    out[...] = rows
    return out
