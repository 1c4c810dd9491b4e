"""Where the rows come from: the embedded banknote data, synthetic data, or the user's own CSV file.

Every loader returns a :class:`Table` of float32 tensors. Problems with the user's data raise
:class:`DataError` with one sentence that names the file, and the column and line where it applies.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BANKNOTE_PATH = Path(__file__).parent / "resources" / "data_banknote_authentication.txt"
BANKNOTE_COLUMNS = ("variance", "skewness", "curtosis", "entropy", "class")


class DataError(ValueError):
    """The data cannot be used as given; the message says what is wrong and where."""


@dataclass(frozen=True)
class Table:
    """Features and labels of a dataset, in file order.

    Attributes:
        x: Features, shape (N, D), float32.
        y: Labels 0.0 or 1.0, shape (N,), float32; None when the file has no label column.
        feature_names: The D column names, used to match columns at prediction time.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    feature_names: tuple[str, ...]


def load_banknote() -> Table:
    """The UCI Banknote Authentication data shipped inside the package: 1372 rows, 4 features.

    >>> table = load_banknote()
    >>> tuple(table.x.shape), table.feature_names
    ((1372, 4), ('variance', 'skewness', 'curtosis', 'entropy'))
    """
    values = np.loadtxt(BANKNOTE_PATH, delimiter=",", dtype=np.float32, ndmin=2)
    return Table(torch.from_numpy(values[:, :-1].copy()), torch.from_numpy(values[:, -1].copy()), BANKNOTE_COLUMNS[:-1])


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
    return Table(x, (logits > 0).float(), tuple(f"x{i}" for i in range(features)))


def read_header(path: str | Path) -> list[str]:
    """The column names of a CSV file: its first row, stripped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file.")
    with path.open(newline="") as f:
        header = next(csv.reader(f), None)
    if not header or not any(name.strip() for name in header):
        raise DataError(f"{path}: the file is empty; expected a header row of column names.")
    return [name.strip() for name in header]


def label_index(path: str | Path, header: list[str], label_column: str | None) -> int:
    """Position of the label column: the named one, or the last column when no name is given."""
    if label_column is None:
        return len(header) - 1
    if label_column not in header:
        raise DataError(f"{path}: no label column {label_column!r}; the columns are {', '.join(header)}.")
    return header.index(label_column)


def read_csv(path: str | Path, label_column: str | None = None) -> Table:
    """Read a numeric CSV file with a header row; the label column (default: the last) must hold 0 or 1.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
    ...     _ = f.write("a,b,label\\n1,2,0\\n3,4,1\\n")
    >>> table = read_csv(f.name)
    >>> table.x.tolist(), table.y.tolist(), table.feature_names
    ([[1.0, 2.0], [3.0, 4.0]], [0.0, 1.0], ('a', 'b'))
    >>> os.remove(f.name)
    """
    path = Path(path)
    header = read_header(path)
    label = label_index(path, header, label_column)
    if len(header) < 2:
        raise DataError(f"{path}: needs at least one feature column besides the label column {header[label]!r}.")
    try:
        values = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2, encoding="utf-8")
    except ValueError:
        _raise_first_bad_cell(path, header, label)  # numpy's message lacks the column name: find the cell
        raise
    if values.shape[0] == 0:
        raise DataError(f"{path}: has a header but no data rows.")
    if values.shape[1] != len(header):
        raise DataError(f"{path}: rows have {values.shape[1]} fields but the header names {len(header)} columns.")
    labels = values[:, label]
    features = np.delete(values, label, axis=1)
    _check_finite(path, header, label, features)
    bad = ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{path}: labels in column {header[label]!r} must be 0 or 1, found {labels[row]:g} on line {row + 2}."
        )
    names = tuple(name for i, name in enumerate(header) if i != label)
    return Table(torch.from_numpy(features.astype(np.float32)), torch.from_numpy(labels.astype(np.float32)), names)


def _check_finite(path: Path, header: list[str], label: int, features: np.ndarray) -> None:
    bad = ~np.isfinite(features)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        name = [n for i, n in enumerate(header) if i != label][col]
        raise DataError(
            f"{path}: column {name!r} holds {features[row, col]} on line {row + 2}; features must be finite."
        )


def _raise_first_bad_cell(path: Path, header: list[str], label: int) -> None:
    """Scan the file row by row (slow, only after the fast parser failed) and raise on the first bad cell."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows)
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}: line {line} has {len(row)} fields but the header names {len(header)} columns."
                )
            for col, cell in enumerate(row):
                try:
                    float(cell)
                except ValueError:
                    if col == label:
                        raise DataError(
                            f"{path}: labels in column {header[col]!r} must be 0 or 1, found {cell.strip()!r} on line {line}."
                        ) from None
                    raise DataError(
                        f"{path}: column {header[col]!r} holds the non-numeric value {cell.strip()!r} on line {line}."
                    ) from None
