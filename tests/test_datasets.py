import gzip
import os

import pytest
import torch

from logreg.data.tables import (
    DataError,
    find_columns,
    load_banknote,
    make_synthetic,
    read_csv,
    read_header,
    select_features,
)


def test_banknote_is_embedded_with_its_published_shape_and_balance():
    table = load_banknote()
    assert table.x.shape == (1372, 4)
    assert table.x.dtype == torch.float32
    # The UCI description: 762 genuine (0) and 610 forged (1) notes.
    assert (table.y == 0).sum() == 762 and (table.y == 1).sum() == 610
    assert table.x[0].tolist() == pytest.approx([3.6216, 8.6661, -2.8073, -0.44699])


def test_synthetic_is_reproducible_from_its_seed_and_noise_controls_separability():
    a, b = make_synthetic(500, 4, 0.0, seed=3), make_synthetic(500, 4, 0.0, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, make_synthetic(500, 4, 0.0, seed=4).x)
    # With no noise a linear rule separates the classes: the generating weights classify every row.
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, generator=gen)
    assert torch.equal(((a.x @ w) > 0).float(), a.y)


def test_csv_label_column_is_chosen_by_name_or_defaults_to_the_last(csv_file):
    path = csv_file("label,a,b\n1,0.5,2\n0,1.5,3\n")
    table = read_csv(path, label_column="label")
    assert table.feature_names == ("a", "b")
    assert table.x.tolist() == [[0.5, 2.0], [1.5, 3.0]]
    assert table.y.tolist() == [1.0, 0.0]
    with pytest.raises(DataError, match="labels in column 'b' must be 0 or 1"):
        read_csv(path)  # the last column, b, holds 2 and 3


def test_feature_columns_select_by_name_in_the_models_order_and_make_the_label_optional(csv_file):
    path = csv_file("b,label,a\n2,1,0.5\n3,0,1.5\n")
    table = read_csv(path, feature_columns=["a", "b"])
    assert table.feature_names == ("a", "b") and table.label_name == "label"
    assert table.x.tolist() == [[0.5, 2.0], [1.5, 3.0]] and table.y.tolist() == [1.0, 0.0]
    unlabelled = read_csv(csv_file("b,a\n2,0.5\n", name="new.csv"), "label", ["a", "b"], need_label=False)
    assert unlabelled.x.tolist() == [[0.5, 2.0]] and unlabelled.y is None
    with pytest.raises(DataError, match=r"new\.csv: no label column 'label'; the columns are b, a\."):
        read_csv(csv_file("b,a\n2,0.5\n", name="new.csv"), "label", ["a", "b"])


def test_columns_that_do_not_fit_the_model_are_named(csv_file):
    with pytest.raises(DataError, match=r"no column 'c'; the model takes 3 features: a, b, c\."):
        find_columns("f.csv", ["a", "b", "label"], "label", ["a", "b", "c"])
    with pytest.raises(DataError, match=r"column 'id' is neither one of the model's features nor the label column 'y'"):
        find_columns("f.csv", ["id", "a", "y"], "y", ["a"])
    with pytest.raises(DataError, match=r"column 'id' is neither .* \(unnamed, so it must be the only other column\)"):
        find_columns("f.csv", ["id", "a", "y"], None, ["a"])
    with pytest.raises(DataError, match=r"d\.csv: the header names column 'a' twice"):
        read_csv(csv_file("a,b,a\n1,2,0\n", name="d.csv"))


def test_embedded_and_synthetic_tables_select_features_by_name():
    table = select_features(load_banknote(), "banknote", ["entropy", "variance", "skewness", "curtosis"])
    assert table.x[0].tolist() == pytest.approx([-0.44699, 3.6216, 8.6661, -2.8073])
    with pytest.raises(
        DataError, match=r"synthetic: column 'x3' is neither one of the model's features nor the label column 'y'"
    ):
        select_features(make_synthetic(5, 4, 0.5, seed=0), "synthetic", ["x0", "x1", "x2"])


# --- files that are not plain UTF-8 CSV, and values that do not fit the model -----------------------------

NOT_UTF8_CSV = [
    (
        "latin-1",
        "a,b,label\n1,2,0\n3,4,1\nça,5,0\n".encode("latin-1"),
        r"f\.csv: is not UTF-8 text \(byte 0xe7 on line 4, as Latin-1 or Windows-1252 files have\); save it as UTF-8",
    ),
    ("latin-1-header", "café,b,label\n1,2,0\n".encode("latin-1"), r"f\.csv: is not UTF-8 text \(byte 0xe9 on line 1"),
    ("utf-16", "a,b,label\n1,2,0\n".encode("utf-16"), r"f\.csv: is UTF-16 text; save it as UTF-8"),
    ("utf-16-no-bom", "a,b,label\n1,2,0\n".encode("utf-16-le"), r"f\.csv: holds NUL bytes, so it is UTF-16 text"),
    ("gzip", gzip.compress(b"a,b,label\n1,2,0\n"), r"f\.csv: is a gzip-compressed file; decompress it first"),
    (
        "digit-separator",
        b"a,b,label\n1,2,0\n1_000,2,1\n",
        r"f\.csv: column 'a' holds '1_000' on line 3; write numbers without digit separators \(1000, not 1_000\)\.",
    ),
    (
        "beyond-float32",
        b"a,b,label\n1,2,0\n3,1e39,1\n",
        r"f\.csv: column 'b' holds 1e\+39 on line 3, beyond float32's range \(magnitude at most 3\.4e\+38\)",
    ),
    (
        "beyond-float32-negative",
        b"a,b,label\n1,2,0\n-3.5e38,1,1\n",
        r"f\.csv: column 'a' holds -3\.5e\+38 on line 3, beyond float32's range",
    ),
]


@pytest.mark.parametrize(("raw", "message"), [c[1:] for c in NOT_UTF8_CSV], ids=[c[0] for c in NOT_UTF8_CSV])
@pytest.mark.parametrize("need_label", [True, False], ids=["fit", "predict"])
def test_files_that_are_not_utf8_numeric_csv_are_named_in_one_sentence(tmp_path, raw, message, need_label):
    path = tmp_path / "f.csv"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=message) as error:
        read_csv(path, "label", None if need_label else ["a", "b"], need_label=need_label)
    assert "\n" not in str(error.value)


def test_quoted_numbers_are_numbers(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('a,"b",label\n"-0.045",2,"0"\n3,"4.5",1\n')  # valid CSV: any field may be quoted
    table = read_csv(path)
    assert table.feature_names == ("a", "b")
    assert table.x.tolist() == [[pytest.approx(-0.045), 2.0], [3.0, 4.5]] and table.y.tolist() == [0.0, 1.0]


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfa,b,label\n1,2,0\n3,4,1\n")  # what Excel's "CSV UTF-8" writes
    assert read_header(path) == ["a", "b", "label"]
    table = read_csv(path, feature_columns=["a", "b"])
    assert table.feature_names == ("a", "b") and table.x.tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_a_header_the_csv_module_cannot_split_is_named_in_one_sentence(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("a," + "b" * 140_000 + ",label\n1,2,0\n")
    with pytest.raises(DataError) as error:
        read_header(path)
    assert (
        str(error.value) == f"{path}: line 1 has a field of more than 131,072 characters, too long for a column name."
    )
    path.write_bytes(b"a,b,label\r1,2,0\r3,4,1\r")  # lines ended by \r alone: one line, holding \r
    with pytest.raises(
        DataError, match=r"f\.csv: line 1 holds a carriage return \(\\r\) inside a field: are its lines"
    ):
        read_header(path)


def test_a_first_line_without_an_end_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr("logreg.data.tables.MAX_HEADER_BYTES", 1000)
    path = tmp_path / "f.csv"
    path.write_text(",".join(f"c{i}" for i in range(400)) + "\n")
    with pytest.raises(
        DataError, match=r"f\.csv: its first line is longer than 1,000 bytes, too long for a header row"
    ):
        read_header(path)


def test_what_is_not_a_regular_file_is_named_for_what_it_is(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # reading it would wait for a writer for ever
    not_regular = (
        "not a regular file; CSV data is read in pieces from a file of known size, so save it to a file first."
    )
    with pytest.raises(DataError) as error:
        read_csv(fifo)
    assert str(error.value) == f"{fifo}: is a named pipe (FIFO), {not_regular}"
    with pytest.raises(DataError) as error:
        read_csv("/dev/zero")  # reading it would never end
    assert str(error.value) == f"/dev/zero: is a character device, {not_regular}"
    (tmp_path / "prepared").mkdir()  # say, a directory `logreg prepare` did not finish
    with pytest.raises(DataError, match=r"prepared: is a directory without logreg\.json, so neither a CSV file nor a"):
        read_csv(tmp_path / "prepared")
    with pytest.raises(DataError, match=r"missing\.csv: no such file\.$"):
        read_csv(tmp_path / "missing.csv")
