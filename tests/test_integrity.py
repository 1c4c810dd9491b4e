"""Damaged prepared data ends in one line naming the file, before LitData reads a byte of it."""

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import QUIET

from logreg.cli import main
from logreg.machinery.errors import DataError
from logreg.streaming.data import PreparedData, StreamingBatches
from logreg.streaming.prepare import prepare

AGAIN = "; the prepared data is damaged: prepare the data again (logreg prepare SOURCE NEW_DIR)."


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """600 synthetic rows of 3 features in blocks of 8, three blocks to a chunk file: several chunks per split."""
    out = tmp_path_factory.mktemp("integrity") / "prepared"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("logreg.streaming.prepare.CHUNK_BYTES", 3 * 8 * 4 * 4)
        prepare("synthetic", out, synthetic_rows=600, synthetic_features=3, block_rows=8)
    return out


@pytest.fixture
def copy(original, tmp_path) -> Path:
    """A copy of the prepared directory, to damage."""
    return Path(shutil.copytree(original, tmp_path / "prepared"))


def chunk(directory: Path, split: str = "train") -> Path:
    """The last chunk file index.json lists for the split."""
    return directory / split / json.loads((directory / split / "index.json").read_text())["chunks"][-1]["filename"]


def garbage(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def set_rows(directory: Path, split: str, rows: int) -> None:
    meta = json.loads((directory / "logreg.json").read_text())
    meta["rows"][split] = rows
    (directory / "logreg.json").write_text(json.dumps(meta))


def test_intact_data_passes_and_is_read_whole(original):
    data = PreparedData.read(str(original))
    for split in ("train", "val", "test"):
        data.check(split)
        assert len(data.load(split)) == data.rows[split]
    assert len(list((original / "train").glob("chunk-*.bin"))) > 1


# (id, what to do to the copy, the file the message names relative to the copy, what it says)
DAMAGE = [
    ("chunk-deleted", lambda d: chunk(d).unlink(), chunk, "missing, though index.json lists it"),
    (
        "chunk-truncated",
        lambda d: chunk(d).write_bytes(garbage(chunk(d).stat().st_size)),
        chunk,
        r"its header does not describe the blocks index.json lists \(overwritten or not a chunk\)",
    ),
    (
        "chunk-of-other-columns",  # a chunk of a 2-feature dataset, index.json and all, in place of this one's
        None,
        chunk,
        r"its header does not describe the blocks index.json lists \(overwritten or not a chunk\)",
    ),
    (
        "index-bad",
        lambda d: (d / "train" / "index.json").write_text('{"chunks": ['),
        lambda d: d / "train" / "index.json",
        r"is not LitData's index of the split \(not JSON listing the chunks\)",
    ),
    (
        "index-empty",
        lambda d: (d / "train" / "index.json").write_text(""),
        lambda d: d / "train" / "index.json",
        r"is not LitData's index of the split \(empty\)",
    ),
    (
        "index-deleted",
        lambda d: (d / "train" / "index.json").unlink(),
        lambda d: d / "train" / "index.json",
        r"missing, LitData's index of the split",
    ),
    (
        "split-deleted",
        lambda d: shutil.rmtree(d / "val"),
        lambda d: d / "val",
        r"missing, the val split of the prepared directory",
    ),
]


@pytest.mark.parametrize(("damage", "named", "message"), [c[1:] for c in DAMAGE], ids=[c[0] for c in DAMAGE])
def test_damaged_chunks_and_indexes_are_named(copy, tmp_path, damage, named, message):
    split = "val" if "val" in str(named(copy)) else "train"
    target = named(copy)
    if damage is None:
        other = tmp_path / "other"
        prepare("synthetic", other, synthetic_rows=600, synthetic_features=2, block_rows=8)
        shutil.rmtree(copy / "train")
        shutil.copytree(other / "train", copy / "train")
        target = chunk(copy)
    else:
        damage(copy)
    data = PreparedData.read(str(copy))
    with pytest.raises(DataError) as error:
        StreamingBatches(data, split, data.mean, data.std, batch_size=4)
    text = str(error.value)
    assert text.startswith(f"{target}: ") and text.endswith(AGAIN) and "\n" not in text, text
    assert re.fullmatch(message, text[len(f"{target}: ") : -len(AGAIN)]), text


@pytest.mark.parametrize("blocks", ["fewer-blocks", "as-many-blocks"])
def test_row_counts_that_disagree_with_the_chunks_are_refused(copy, blocks):
    """A logreg.json from other data (or edited) would weight each full-batch gradient by the wrong row count."""
    actual = PreparedData.read(str(copy)).rows["test"]
    if blocks == "fewer-blocks":  # index.json tells: 5 blocks of 8 rows cannot hold the split's rows
        wrong, found = 40, f"{-(-actual // 8)} blocks of up to 8 rows"
    else:  # the same number of blocks: only the chunks' headers tell
        wrong, found = actual - 1, f"{actual:,} rows"
        assert -(-wrong // 8) == -(-actual // 8)
    set_rows(copy, "test", wrong)
    data = PreparedData.read(str(copy))
    with pytest.raises(DataError) as error:
        data.load("test")
    assert str(error.value) == (
        f"{copy}/logreg.json: says the test split holds {wrong:,} rows, but its chunks ({copy}/test) hold {found}: "
        "logreg.json belongs to other data or the chunks were changed; prepare the data again (logreg prepare "
        "SOURCE NEW_DIR)."
    )


def test_statistics_that_do_not_fit_the_features_are_refused(copy):
    meta = json.loads((copy / "logreg.json").read_text())
    meta["std"] = meta["std"][:2]
    (copy / "logreg.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"logreg\.json: its statistics, row counts or block size do not describe 3"):
        PreparedData.read(str(copy))


def test_the_cli_names_the_damaged_file_in_one_line_before_training(copy, tmp_path, capsys):
    chunk(copy).unlink()
    args = ["fit", *QUIET, "--data.dataset", str(copy), "--data.batch_mode", "full"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--trainer.default_root_dir", str(tmp_path / "logs")])
    assert exit_info.value.code == f"error: {chunk(copy)}: missing, though index.json lists it{AGAIN}"
    assert not list((tmp_path / "logs").glob("**/*.ckpt"))


def test_a_chunk_that_vanishes_after_the_check_is_named_when_read(copy):
    data = PreparedData.read(str(copy))
    batches = StreamingBatches(data, "train", data.mean, data.std, batch_size=4)
    chunk(copy).unlink()  # after the check, before LitData reaches it
    with pytest.raises(DataError) as error:
        list(batches)
    assert str(error.value) == f"{chunk(copy)}: vanished or shrank while it was being read{AGAIN}"
