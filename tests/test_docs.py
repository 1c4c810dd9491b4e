"""The README and the pages under docs/: every relative link resolves, and the README stays short."""

import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)  # fenced blocks and inline code hold no links
README_LIMIT = 12_500  # bytes: a newcomer reads it to the end; the rest lives under docs/


def relative_links(page: Path) -> list[str]:
    text = CODE.sub("", page.read_text(encoding="utf-8"))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def test_the_pages_have_relative_links():
    # guards the pattern itself: the README links every page under docs/
    linked = {(ROOT / target).resolve() for target in relative_links(ROOT / "README.md")}
    assert {page.resolve() for page in PAGES[1:]} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_names_an_existing_file_without_an_anchor(page):
    for target in relative_links(page):
        # an anchor breaks silently when a heading is reworded; link the page, name the section in words
        assert "#" not in target, f"{page.name}: link {target!r} carries an anchor"
        assert (page.parent / target).is_file(), f"{page.name}: link {target!r} names no file"


def test_the_readme_stays_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; move detail to a page under docs/"


def python_block(page: Path, defines: str) -> str:
    """The fenced Python block of ``page`` that defines ``defines`` (e.g. ``class Deep``), word for word."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    (block,) = [b for b in blocks if defines in b]
    return block


@pytest.mark.slow
def test_the_readme_model_recipe_trains_from_a_file_in_the_current_directory(tmp_path):
    import subprocess
    import sys

    import torch

    (tmp_path / "my_model.py").write_text(python_block(ROOT / "README.md", "class Deep"))
    args = ["fit", "--model", "my_model.Deep", "--model.hidden", "5", "--model.optimizer", "Adam"]
    args += ["--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]
    # the `logreg` command, run where the user's file is, as the README says
    logreg = Path(sys.executable).parent / "logreg"
    result = subprocess.run([str(logreg), *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "lightning_logs/minibatch/version_0/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"] == "my_model.Deep" and ckpt["global_step"] == 2 * 26
    assert ckpt["state_dict"]["net.0.weight"].shape == (5, 4)  # hidden 5, the banknote's 4 features


@pytest.mark.parametrize(("mode", "updates"), [("full", 1), ("example", 60), ("minibatch", math.ceil(60 / 16))])
def test_the_readme_data_recipe_reads_parquet_in_every_batch_mode(tmp_path, monkeypatch, mode, updates):
    import polars as pl
    import torch
    from conftest import QUIET, separable_csv

    from logreg.cli import main

    (tmp_path / "my_data.py").write_text(python_block(ROOT / "README.md", "class ParquetData"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "my_data", raising=False)
    frame = pl.read_csv(separable_csv(tmp_path / "data.csv", rows=100))  # 60 training rows: 20 each for val and test
    frame.write_parquet(tmp_path / "data.parquet")
    args = ["fit", "--data", "my_data.ParquetData", "--data.path", str(tmp_path / "data.parquet")]
    args += ["--data.batch_mode", mode, "--data.batch_size", "16", "--trainer.max_epochs", "2"]
    main([*args, *QUIET, "--trainer.default_root_dir", str(tmp_path / "logs")])
    ckpt = torch.load(tmp_path / "logs" / mode / "version_0/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * updates
    state = ckpt["ParquetData"]
    assert tuple(state["feature_names"]) == ("a", "b", "c") and state["label_name"] == "label"
    assert ckpt["state_dict"]["linear.weight"].shape == (1, 3)
