"""CSV text read with polars piece by piece: the values as numpy reads them, and the first bad line named."""

import numpy as np
import pytest
import torch

from logreg.data.batches import CsvBatches
from logreg.data.csv import TextPiece, count_lines, piece_ranges
from logreg.data.tables import FLOAT32_MAX, DataError, read_csv, read_csv_in_pieces


def rows(n: int, seed: int = 0) -> str:
    """n lines of three features (a few digits each, some negative) and a 0/1 label."""
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((n, 3)) * 100
    return "".join(f"{a:.5g},{b:.5g},{c:.5g},{int(a > b)}\n" for a, b, c in x)


@pytest.mark.parametrize("piece_bytes", [64, 1000, 2**20], ids=["tiny", "small", "one"])
def test_pieces_read_the_values_numpy_reads_in_file_order(tmp_path, monkeypatch, piece_bytes):
    path = tmp_path / "d.csv"
    path.write_text("a,b,c,label\n" + rows(500))
    monkeypatch.setattr("logreg.data.csv.PIECE_BYTES", piece_bytes)
    expected = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    table = read_csv(path)
    np.testing.assert_array_equal(table.x.numpy(), expected[:, :3].astype(np.float32))
    np.testing.assert_array_equal(table.y.numpy(), expected[:, 3])
    assert table.x.is_contiguous() and table.x.shape == (500, 3)
    pieces = list(read_csv_in_pieces(path, piece_bytes=piece_bytes))
    assert len(pieces) == len(piece_ranges(path, piece_bytes))  # every piece holds the start of a line here
    np.testing.assert_array_equal(np.concatenate([x for x, _ in pieces]), table.x.numpy())
    np.testing.assert_array_equal(np.concatenate([y for _, y in pieces]), table.y.numpy())


def test_spaces_quotes_blank_lines_and_crlf_read_as_numpy_reads_them(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'a,b,label\r\n 1.5 , -2,0\r\n\r\n"3e2",+.5,"1"\r\n\n4,0,0\n')  # spaces after 1.5
    table = read_csv(path)
    assert table.x.tolist() == [[1.5, -2.0], [300.0, 0.5], [4.0, 0.0]] and table.y.tolist() == [0.0, 1.0, 0.0]
    assert count_lines(path) == 7  # newlines + 1: room for every row, whatever the last line ends with


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1,2,0\n\n\n3,,1\n", "column 'b' holds the non-numeric value '' on line 5."),
        ("1,2,0\r\n\r\n3,NA,1\r\n", "column 'b' holds the non-numeric value 'NA' on line 4."),
        ("1,2,0\n3, x ,1\n", "column 'b' holds the non-numeric value 'x' on line 3."),
        ("1,2,0\n3,4\n", "line 3 has 2 fields but the header names 3 columns."),
        ("1,2,0\n3,4,1,\n", "line 3 has 4 fields but the header names 3 columns."),
        ("1,2,0\n  \n", "line 3 has 1 fields but the header names 3 columns."),
        ("1,2,0\n3,4,1.0000001\n", "labels in column 'label' must be 0 or 1, found 1 on line 3."),
        ("1,2,0\n3,4,1e-300\n", "labels in column 'label' must be 0 or 1, found 1e-300 on line 3."),
        ("1,2,0\n3,3.4028235e38,1\n", "column 'b' holds 3.40282e+38 on line 3, beyond float32's range"),
        ("1,2,0\n3,1e400,1\n", "column 'b' holds inf on line 3; features must be finite."),
        # Python's csv module, which finds the bad line, takes fields of up to 131,072 characters
        ("1,2,0\n3,x" + "y" * 140_000 + ",1\n", "line 3 has a field of more than 131,072 characters, too long for a number."),
        ("1,2,0\n3,zz,1\n4,x" + "y" * 140_000 + ",1\n", "column 'b' holds the non-numeric value 'zz' on line 3."),
        # a long cell is quoted by its start and length, never whole
        ("1,2,0\n3,x" + "y" * 100_000 + ",1\n", f"column 'b' holds the non-numeric value {'x' + 'y' * 39!r}"[:-1] + "...' (100,001 characters) on line 3."),
    ],
    ids=["empty-cell", "na-after-crlf-blank", "spaced-word", "short", "long", "spaces-only", "label-1.0000001",
         "label-tiny", "float32-edge", "float64-overflow", "field-over-csv-limit", "bad-cell-before-long-field",
         "long-cell-shortened"],
)  # fmt: skip
def test_each_bad_line_is_named_with_its_line_in_the_file(tmp_path, body, message):
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n" + body)
    with pytest.raises(DataError) as error:
        read_csv(path)
    assert str(error.value).startswith(f"{path}: {message}")
    assert len(str(error.value)) < 200


def test_the_largest_float32_is_a_value_not_an_overflow(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(f"a,label\n{FLOAT32_MAX!r},0\n{-FLOAT32_MAX!r},1\n")
    assert read_csv(path).x[:, 0].tolist() == [FLOAT32_MAX, -FLOAT32_MAX]


def test_the_first_bad_cell_in_file_order_is_named(tmp_path):
    # a parser that converts column by column meets column a's bad cell on line 40 before column c's on
    # line 20; the first in file order is c's.
    lines = ["1,2,0"] * 60
    lines[18] = "1,2,zz"  # line 20
    lines[38] = "xx,2,0"  # line 40
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels in column 'label' must be 0 or 1, found 'zz' on line 20\.$"):
        read_csv(path)
    lines[5] = "1,2"  # line 7: a short row comes before both
    path.write_text("a,b,label\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 7 has 2 fields but the header names 3 columns\.$"):
        read_csv(path)


def test_a_bad_line_deep_in_a_later_piece_is_named_by_its_line_in_the_file(tmp_path, monkeypatch):
    path = tmp_path / "d.csv"
    path.write_text("a,b,c,label\n" + rows(300) + "\n" + "1,2,3,0\n" * 10 + "1,2,oops,0\n" + rows(50))
    monkeypatch.setattr("logreg.data.csv.PIECE_BYTES", 700)
    with pytest.raises(DataError, match=r"column 'c' holds the non-numeric value 'oops' on line 313\.$"):
        read_csv(path)
    with pytest.raises(DataError, match=r"on line 313\.$"):
        list(read_csv_in_pieces(path))


def test_a_piece_is_whole_lines_and_knows_where_each_row_starts(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,b\n1,2\n\n3,4\r\n\r\n5,6")
    pieces = [TextPiece.read(path, start, end) for start, end in piece_ranges(path, 5)]
    # every row's line in exactly one piece; a piece starts at a row (polars counts the fields of its first line)
    assert b"".join(p.data for p in pieces) == b"1,2\n3,4\r\n5,6"
    offsets = np.concatenate([p.row_offsets() for p in pieces])
    assert offsets.tolist() == [4, 9, 16]  # the rows' lines; empty lines, with or without \r, are not rows
    assert pieces[-1].line(0) == 6


def test_csv_batches_stream_a_file_in_pieces_with_the_training_statistics(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("label,b,a\n" + "".join(f"{i % 2},{i},{2 * i}\n" for i in range(25)))
    mean, std = np.array([1.0, 2.0], np.float32), np.array([2.0, 4.0], np.float32)
    batches = CsvBatches(path, torch.from_numpy(mean), torch.from_numpy(std), 4, "label", ["a", "b"], piece_bytes=40)
    got = list(batches)
    x = torch.cat([b[0] for b in got]).numpy()
    y = torch.cat([b[1] for b in got]).numpy()
    raw = np.stack([2.0 * np.arange(25), np.arange(25)], axis=1)
    np.testing.assert_allclose(x, (raw - mean) / std, rtol=1e-6)
    assert y.tolist() == [i % 2 for i in range(25)] and max(len(b[0]) for b in got) == 4
