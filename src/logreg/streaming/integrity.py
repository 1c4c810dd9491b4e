"""A prepared split checked against ``logreg.json`` before LitData reads it, so damage ends in one line naming
the file, never in a traceback or a wrong result.

LitData trusts its ``index.json``: a deleted or truncated chunk makes it wait for a download that never comes
and then fail with a traceback, a chunk replaced by other bytes fails deeper still, and a ``logreg.json`` whose
row counts disagree with the chunks is never noticed (full-batch training then weights every gradient by the
wrong count). So before a split is read:

- its directory and ``index.json`` exist, and ``index.json`` is LitData's index (JSON listing the chunks);
- every chunk listed exists with the size ``index.json`` gives it, and its header (item count and item offsets)
  agrees: every item a block of up to ``block_rows`` rows of D + 1 columns, the first
  one's own header saying so too (float32, 2 dimensions, that shape);
- the rows of all blocks add up to ``logreg.json``'s count for the split.

That reads a few hundred bytes of each chunk file (a chunk holds about 8 MB), so checking a split costs a small
read per chunk, not a pass over the data. Data in object storage is checked as far as its ``index.json``
allows (the number of blocks against the rows); reading every chunk's header there would be a request each.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from logreg.machinery.errors import DataError

FLOAT32_CODE = 9  # LitData's numpy serializer's code for float32 (litdata.constants._NUMPY_DTYPES_MAPPING)
BLOCK_HEADER = 20  # bytes before a block's values: element size, dtype code, ndim, rows, columns (uint32 each)
AGAIN = "prepare the data again (logreg prepare SOURCE NEW_DIR)"


def damaged(path: str | Path, what: str) -> DataError:
    """The one-line error for a damaged file of a prepared directory.

    >>> str(damaged("out/train/chunk-0-0.bin", "missing"))
    'out/train/chunk-0-0.bin: missing; the prepared data is damaged: prepare the data again (logreg prepare SOURCE NEW_DIR).'
    """
    return DataError(f"{path}: {what}; the prepared data is damaged: {AGAIN}.")


def check_split(url: str, split: str, width: int, rows: int, block_rows: int, read_text: Callable[[str], str]) -> None:
    """Raise DataError, naming the file, unless split ``split`` of the prepared directory ``url`` holds ``rows``
    rows of ``width`` columns in blocks of ``block_rows`` (see the module's docstring).

    Args:
        url: The prepared directory, a local path or an object-store URL.
        split: ``train``, ``val`` or ``test``.
        width: Columns per row: the features, then the label.
        rows: The split's rows according to ``logreg.json``.
        block_rows: Rows per block according to ``logreg.json``.
        read_text: Reads a file of ``url`` (a local path or an object-store URL) as text.
    """
    directory = f"{url}/{split}"
    local = "://" not in url
    if local and not Path(directory).is_dir():
        raise damaged(directory, f"missing, the {split} split of the prepared directory")
    chunks = _index(f"{directory}/index.json", read_text)
    items = sum(chunk["chunk_size"] for chunk in chunks)
    if items != math.ceil(rows / block_rows):
        raise _rows_differ(url, split, rows, f"{items:,} blocks of up to {block_rows:,} rows")
    if not local:
        return
    found = 0
    for chunk in chunks:
        sizes = _item_sizes(Path(directory) / chunk["filename"], chunk, width)
        block_bytes = width * 4
        counts = (sizes - BLOCK_HEADER) // block_bytes
        if ((sizes - BLOCK_HEADER) % block_bytes).any() or (counts < 1).any() or (counts > block_rows).any():
            raise damaged(Path(directory) / chunk["filename"], f"its items are not blocks of {width} float32 columns")
        found += int(counts.sum())
    if found != rows:
        raise _rows_differ(url, split, rows, f"{found:,} rows")


def _index(path: str, read_text: Callable[[str], str]) -> list[dict]:
    """The chunks LitData's ``index.json`` lists: [{"filename", "chunk_size" (items), "chunk_bytes"}, ...]."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise damaged(path, "missing, LitData's index of the split") from None
    except UnicodeDecodeError:
        raise damaged(path, "is not LitData's index of the split (not text)") from None
    try:
        chunks = json.loads(text)["chunks"]
        for chunk in chunks:
            if not isinstance(chunk["filename"], str) or "/" in chunk["filename"]:
                raise ValueError("a chunk's file name")
            chunk["chunk_size"], chunk["chunk_bytes"] = int(chunk["chunk_size"]), int(chunk["chunk_bytes"])
    except (ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
        what = "empty" if not text.strip() else "not JSON listing the chunks"
        raise damaged(path, f"is not LitData's index of the split ({what})") from None
    return chunks


def _item_sizes(path: Path, chunk: dict, width: int) -> np.ndarray:
    """Bytes of each item of a chunk file, from its header, checked against ``index.json`` and the file's size.

    A chunk is num_items (uint32), num_items + 1 offsets (uint32), then the items; an item here is one block.
    """
    items = chunk["chunk_size"]
    head = 4 * (items + 2)  # the item count and the offsets
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            data = f.read(head + BLOCK_HEADER)
    except FileNotFoundError:
        raise damaged(path, "missing, though index.json lists it") from None
    if size != chunk["chunk_bytes"]:
        raise damaged(
            path, f"holds {size:,} bytes where index.json says {chunk['chunk_bytes']:,} (truncated or replaced)"
        )
    header = np.frombuffer(data[: len(data) // 4 * 4], np.uint32).astype(np.int64)
    count, offsets, first = header[0:1], header[1 : items + 2], header[items + 2 :]
    sizes = np.diff(offsets)
    block = [sizes[0] - 4 if len(sizes) else -1, FLOAT32_CODE, 2, None, width]  # the first block's own header
    if (
        len(first) != BLOCK_HEADER // 4
        or count[0] != items
        or offsets[0] != head
        or offsets[-1] != size
        or (sizes < 0).any()
        or any(want is not None and got != want for got, want in zip(first.tolist(), block, strict=True))
    ):
        raise damaged(path, "its header does not describe the blocks index.json lists (overwritten or not a chunk)")
    return sizes


def _rows_differ(url: str, split: str, rows: int, found: str) -> DataError:
    return DataError(
        f"{url}/logreg.json: says the {split} split holds {rows:,} rows, but its chunks ({url}/{split}) hold {found}: "
        f"logreg.json belongs to other data or the chunks were changed; {AGAIN}."
    )
