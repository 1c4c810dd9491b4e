"""Where the rows come from: the embedded banknote data, synthetic data, or the user's own CSV file.

Every loader returns a :class:`Table` of float32 tensors. Problems with the user's data raise
:class:`DataError` with one sentence that names the file, and the column and line where it applies.
A CSV file is read a piece at a time (:mod:`logreg.data.csv`): whole into memory (:func:`read_csv`), or
piece after piece in flat memory (:func:`read_csv_in_pieces`, :class:`CsvBatches`, ``logreg prepare``).
"""

from __future__ import annotations

import csv
import math
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from logreg.data import csv as csvtext
from logreg.data.csv import TextPiece, count_lines, piece_ranges, rows_of
from logreg.machinery.errors import ConfigError, DataError

BANKNOTE_PATH = Path(__file__).parent / "resources" / "data_banknote_authentication.txt"
BANKNOTE_COLUMNS = ("variance", "skewness", "curtosis", "entropy", "class")


@dataclass(frozen=True)
class Table:
    """Features and labels of a dataset, in file order.

    Attributes:
        x: Features, shape (N, D), float32.
        y: Labels 0.0 or 1.0, shape (N,), float32; None when the file has no label column.
        feature_names: The D column names, used to match columns at prediction time.
        label_name: Name of the label column; None when the file has none.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    feature_names: tuple[str, ...]
    label_name: str | None = None


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise ConfigError unless both fractions lie in (0, 1) and leave training rows: the in-memory split and
    ``logreg prepare``'s take the same two arguments."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ConfigError(f"{name} must lie strictly between 0 and 1; got {value}.")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 to leave training rows; got {val_fraction + test_fraction:g}."
        )


def load_banknote() -> Table:
    """The UCI Banknote Authentication data shipped inside the package: 1372 rows, 4 features.

    >>> table = load_banknote()
    >>> tuple(table.x.shape), table.feature_names
    ((1372, 4), ('variance', 'skewness', 'curtosis', 'entropy'))
    """
    values = np.loadtxt(BANKNOTE_PATH, delimiter=",", dtype=np.float32, ndmin=2)
    x, y = torch.from_numpy(values[:, :-1].copy()), torch.from_numpy(values[:, -1].copy())
    return Table(x, y, BANKNOTE_COLUMNS[:-1], BANKNOTE_COLUMNS[-1])


def make_synthetic(rows: int, features: int, noise: float, seed: int) -> Table:
    """Linearly separable data blurred by noise: y = [x @ w + noise * e > 0], with x, w, e standard normal.

    Generated in chunks-free tensor ops, so millions of rows take well under a second.

    >>> table = make_synthetic(rows=5, features=3, noise=0.5, seed=0)
    >>> tuple(table.x.shape), sorted(set(table.y.tolist())) <= [0.0, 1.0]
    ((5, 3), True)
    """
    if rows < 1 or features < 1:
        raise DataError(f"synthetic data needs at least one row and one feature, got rows={rows}, features={features}.")
    if noise < 0:
        raise DataError(f"synthetic noise must be 0 or more, got {noise}.")
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(features, generator=gen)
    x = torch.randn(rows, features, generator=gen)
    logits = x @ w / math.sqrt(features) + noise * torch.randn(rows, generator=gen)  # (N, D) -> (N,)
    return Table(x, (logits > 0).float(), tuple(f"x{i}" for i in range(features)), "y")


# Leading bytes of files that are not plain UTF-8 text, and what to tell the user about them.
_NOT_TEXT = (
    (b"\x1f\x8b", "is a gzip-compressed file; decompress it first (gunzip) and pass the .csv"),
    (b"PK\x03\x04", "is a zip archive; extract the CSV file and pass that"),
    (b"BZh", "is a bzip2-compressed file; decompress it first (bunzip2) and pass the .csv"),
    (b"\xfd7zXZ\x00", "is an xz-compressed file; decompress it first (unxz) and pass the .csv"),
    (b"\xff\xfe", "is UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"),
    (b"\xfe\xff", "is UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"),
)
_SNIFF_BYTES = 4096
MAX_HEADER_BYTES = 64 * 2**20  # a header of a million long column names fits; a file without line ends does not
PREPARED_MARKER = "logreg.json"  # what ``logreg prepare`` writes last into its directory
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: a larger feature becomes inf in the model


def check_text_file(path: Path) -> None:
    """Raise DataError unless ``path`` looks like UTF-8 text: not compressed, not UTF-16, not binary.

    Only the first bytes are read; a byte that is not UTF-8 further on is reported where its piece is parsed.
    """
    with path.open("rb") as f:
        start = f.read(_SNIFF_BYTES)
    for magic, message in _NOT_TEXT:
        if start.startswith(magic):
            raise DataError(f"{path}: {message}.")
    if b"\x00" in start:  # UTF-16 without a byte-order mark, or a binary file: NUL never occurs in UTF-8 CSV text
        raise DataError(f"{path}: holds NUL bytes, so it is UTF-16 text or a binary file, not a UTF-8 CSV file.")


def check_regular_file(path: Path) -> None:
    """Raise DataError unless ``path`` is a regular file, saying what it is instead.

    A CSV file is read in pieces from several offsets, and its size is known in advance: a named pipe, a
    device such as /dev/zero or a directory cannot be read so (the first would block, the second never end).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file.") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise DataError(
            f"{path}: is a directory without {PREPARED_MARKER}, so neither a CSV file nor a directory made by "
            f"`logreg prepare` (which writes {PREPARED_MARKER} last, once every split is complete)."
        )
    kinds = (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    kind = next((name for test, name in kinds if test(mode)), "a socket" if stat.S_ISSOCK(mode) else "not a file")
    raise DataError(
        f"{path}: is {kind}, not a regular file; CSV data is read in pieces from a file of known size, "
        "so save it to a file first."
    )


def read_header(path: str | Path) -> list[str]:
    """The column names of a CSV file: its first row, stripped, without a UTF-8 byte-order mark."""
    path = Path(path)
    check_regular_file(path)
    check_text_file(path)
    with path.open("rb") as f:
        line = f.readline(MAX_HEADER_BYTES + 1)
    if len(line) > MAX_HEADER_BYTES:
        raise DataError(
            f"{path}: its first line is longer than {MAX_HEADER_BYTES:,} bytes, too long for a header row of "
            "column names; is it a CSV file with one row per line?"
        )
    try:
        # utf-8-sig drops the byte-order mark some editors write, which would otherwise start the first name.
        header = next(csv.reader([line.decode("utf-8-sig")]), None)
    except UnicodeDecodeError as err:
        raise csvtext.not_utf8(path, line[err.start], 1) from None
    except csv.Error as err:
        raise csvtext.unreadable_line(path, 1, err, "a column name") from None
    if not header or not any(name.strip() for name in header):
        raise DataError(f"{path}: the file is empty; expected a header row of column names.")
    header = [name.strip() for name in header]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path}: the header names column {name!r} twice; column names must be unique.")
        seen.add(name)
    return header


def label_index(path: str | Path, header: list[str], label_column: str | None) -> int:
    """Position of the label column: the named one, or the last column when no name is given."""
    if label_column is None:
        return len(header) - 1
    if label_column not in header:
        raise DataError(f"{path}: no label column {label_column!r}; the columns are {', '.join(header)}.")
    return header.index(label_column)


def find_columns(
    source: str | Path,
    header: Sequence[str],
    label_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
) -> tuple[list[int], int | None]:
    """Positions of the feature columns (in the model's order) and of the label column (None: not there).

    Without ``feature_columns`` the features are every column except the label (default: the last column).
    With them (the names a checkpoint's model was trained on) each must be in ``header``, in any order; the
    label is ``label_column`` or else the one remaining column, and may be missing. Any further column is an
    error: a file that does not match the model is never read by guessing which columns to use.

    >>> find_columns("f.csv", ["a", "b", "label"])
    ([0, 1], 2)
    >>> find_columns("f.csv", ["b", "a"], feature_columns=["a", "b"])
    ([1, 0], None)
    """
    if feature_columns is None:
        label = label_index(source, header, label_column)
        if len(header) < 2:
            raise DataError(f"{source}: needs at least one feature column besides the label column {header[label]!r}.")
        return [i for i in range(len(header)) if i != label], label
    expected = f"the model takes {len(feature_columns)} features: {', '.join(feature_columns)}"
    position = {name: i for i, name in enumerate(header)}  # dict and set lookups: wide files have 10,000s
    for name in feature_columns:
        if name not in position:
            raise DataError(f"{source}: no column {name!r}; {expected}.")
    features = [position[name] for name in feature_columns]
    chosen = set(features)
    others = [i for i in range(len(header)) if i not in chosen]
    if label_column is not None:
        label = header.index(label_column) if label_column in header else None
    else:
        label = others[-1] if len(others) == 1 else None
    for i in others:
        if i != label:
            which = repr(label_column) if label_column is not None else "(unnamed, so it must be the only other column)"
            raise DataError(
                f"{source}: column {header[i]!r} is neither one of the model's features nor the label column {which}; {expected}."
            )
    return features, label


def csv_columns(
    path: Path, label_column: str | None, feature_columns: Sequence[str] | None, need_label: bool
) -> tuple[list[str], list[int], int | None]:
    """A CSV file's header and the positions of its feature and label columns (label None: not there, which
    only ``need_label=False`` accepts)."""
    header = read_header(path)
    features, label = find_columns(path, header, label_column, feature_columns)
    if label is None and need_label:
        name = repr(label_column) if label_column is not None else "besides the features"
        raise DataError(f"{path}: no label column {name}; the columns are {', '.join(header)}.")
    return header, features, label


def read_csv(
    path: str | Path,
    label_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    need_label: bool = True,
) -> Table:
    """Read a numeric CSV file with a header row; the label column (default: the last) must hold 0 or 1.

    Memory peaks at the float32 table plus one piece of text, however large the file.

    Args:
        path: The CSV file.
        label_column: Name of the label column; default as in :func:`find_columns`.
        feature_columns: Names of the feature columns in the model's order; default all but the label.
        need_label: Whether a missing label column is an error (training and evaluation) or not (prediction).

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write("a,b,label\\n1,2,0\\n3,4,1\\n")
    >>> table = read_csv(f.name)
    >>> table.x.tolist(), table.y.tolist(), table.feature_names
    ([[1.0, 2.0], [3.0, 4.0]], [0.0, 1.0], ('a', 'b'))
    >>> os.remove(f.name)
    """
    path = Path(path)
    header, features, label = csv_columns(path, label_column, feature_columns, need_label)
    # One array with room for as many rows as the file has lines, filled piece by piece: pages never written
    # are never allocated, so memory holds the float32 table once, plus a piece, and never a second copy.
    x = np.empty((count_lines(path), len(features)), dtype=np.float32)
    y = None if label is None else np.empty(len(x), dtype=np.float32)
    n = 0
    for start, end in piece_ranges(path):
        part, labels = read_rows(TextPiece.read(path, start, end), header, features, label, into=x[n:])
        if y is not None:
            y[n : n + len(part)] = labels
        n += len(part)
    if n == 0:
        raise DataError(f"{path}: has a header but no data rows.")
    names = tuple(header[i] for i in features)
    if y is None:
        return Table(torch.from_numpy(x[:n]), None, names)
    return Table(torch.from_numpy(x[:n]), torch.from_numpy(y[:n]), names, header[label])


def read_rows(
    text: TextPiece,
    header: Sequence[str],
    features: list[int],
    label: int | None,
    into: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A piece's features (n, D) float32 in the model's order (into the first rows of ``into`` when given)
    and labels (n,) float64 (None without a label column), checked as :func:`check_values` checks them.

    The features are parsed in float32, where a value beyond float32's range has become inf; so when any
    value is not finite, reaches float32's largest or a label is not 0 or 1, the piece is parsed again in
    float64, and the checks there name the cell as written.
    """
    table = text.parse(list(header), label)
    x = rows_of(table, features, out=None if into is None else into[: len(table)])
    y = None if label is None else table.get_column(table.columns[label]).to_numpy()
    fine = not len(x) or (x.min() > -FLOAT32_MAX and x.max() < FLOAT32_MAX)  # NaN fails both comparisons
    if not fine or (y is not None and not ((y == 0) | (y == 1)).all()):
        exact = text.parse(list(header), label, float64=True)
        check_values(
            text.path,
            [header[i] for i in features],
            None if label is None else header[label],
            rows_of(exact, features),
            y,
            line_of=text.line,
        )
    return x, y


def read_csv_in_pieces(
    path: str | Path,
    label_column: str | None = None,
    feature_columns: Sequence[str] | None = None,
    need_label: bool = True,
    piece_bytes: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(features (n, D), labels (n,) or None) float32 of a CSV file, piece after piece, in file order.

    The columns and checks are those of :func:`read_csv`, with the same messages; memory holds one piece of
    about ``piece_bytes`` of text at a time (default ``logreg.data.csv.PIECE_BYTES``), whatever the file's size.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write("a,b,label\\n1,2,0\\n3,4,1\\n")
    >>> [(x.tolist(), y.tolist()) for x, y in read_csv_in_pieces(f.name, piece_bytes=12)]
    [([[1.0, 2.0]], [0.0]), ([[3.0, 4.0]], [1.0])]
    >>> os.remove(f.name)
    """
    path = Path(path)
    header, features, label = csv_columns(path, label_column, feature_columns, need_label)
    empty = True
    for start, end in piece_ranges(path, piece_bytes):
        x, y = read_rows(TextPiece.read(path, start, end), header, features, label)
        if len(x):
            empty = False
            yield x, None if y is None else y.astype(np.float32)
    if empty:
        raise DataError(f"{path}: has a header but no data rows.")


def select_features(table: Table, source: str, feature_columns: Sequence[str] | None) -> Table:
    """The table with exactly ``feature_columns`` as its features, in that order (unchanged when None).

    >>> select_features(make_synthetic(2, 3, 0.5, seed=0), "synthetic", ["x2", "x0", "x1"]).feature_names
    ('x2', 'x0', 'x1')
    """
    if feature_columns is None:
        return table
    header = [*table.feature_names, table.label_name]
    features, _ = find_columns(source, header, table.label_name, feature_columns)
    return Table(table.x[:, features], table.y, tuple(feature_columns), table.label_name)


def check_values(
    path: str | Path,
    names: Sequence[str],
    label_name: str | None,
    features: np.ndarray,
    labels: np.ndarray | None,
    first_line: int = 2,
    line_of: Callable[[int], int] | None = None,
) -> None:
    """Raise DataError on the first feature that is not finite in float32 or label that is not 0/1.

    Float32 is the model's precision: 1e39 would become inf there. Shared by :func:`read_csv` and
    ``logreg prepare``, so both name the same column and line.

    Args:
        path: The file, for the message.
        names: The feature columns' names, in the order of ``features``' columns.
        label_name: The label column's name (None: no labels).
        features: Values of shape (N, D).
        labels: Values of shape (N,), or None.
        first_line: The file line of row 0 (2 below a header).
        line_of: Returns the file line of row r when rows are not consecutive lines from ``first_line``
            (a piece of a large file, blank lines between rows); default ``first_line + r``.
    """
    line = line_of if line_of is not None else (lambda row: first_line + row)
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(
            f"{path}: column {names[col]!r} holds {features[row, col]} on line {line(row)}; features must be finite."
        )
    too_large = np.abs(features) > FLOAT32_MAX
    if too_large.any():
        row, col = map(int, np.argwhere(too_large)[0])
        raise DataError(
            f"{path}: column {names[col]!r} holds {features[row, col]:g} on line {line(row)}, beyond float32's "
            f"range (magnitude at most {FLOAT32_MAX:.3g}); rescale the column."
        )
    if labels is None:
        return
    bad = ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{path}: labels in column {label_name!r} must be 0 or 1, found {labels[row]:g} on line {line(row)}."
        )
