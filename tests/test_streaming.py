import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from logreg.cli import build_cli, main
from logreg.streaming.data import PreparedData, StreamingBatches, is_prepared
from logreg.streaming.prepare import prepare

STREAMED = "logreg.streaming.StreamingDataModule"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> PreparedData:
    """1001 synthetic rows in blocks of 16: no count (train rows, windows, batches) divides another."""
    out = tmp_path_factory.mktemp("streaming") / "prepared"
    prepare("synthetic", out, synthetic_rows=1001, synthetic_features=3, block_rows=16)
    return PreparedData.read(str(out))


def batches(data: PreparedData, **args) -> StreamingBatches:
    return StreamingBatches(data, "train", data.mean, data.std, window_rows=64, **args)


def in_order(rows: torch.Tensor) -> np.ndarray:
    """The rows sorted by their first column (distinct random values), to compare multisets of rows."""
    a = rows.double().numpy()
    return a[np.argsort(a[:, 0], kind="stable")]


def test_a_prepared_directory_is_recognised(prepared, tmp_path):
    assert is_prepared(prepared.url) and is_prepared("s3://bucket/prepared")
    assert not is_prepared(str(tmp_path)) and not is_prepared("banknote")


def test_minibatches_cover_every_row_once_standardised_and_reshuffled_each_epoch(prepared):
    n = prepared.rows["train"]
    raw = prepared.load("train")
    expected = in_order(torch.cat([(raw[:, :-1] - prepared.mean) / prepared.std, raw[:, -1:]], dim=1))
    epoch = [0]
    loader = batches(prepared, batch_size=50, shuffle=True, epoch=lambda: epoch[0])
    orders = []
    for e in (0, 1, 0):
        epoch[0] = e
        got = list(loader)
        assert len(got) == len(loader) == -(-n // 50)
        assert [len(y) for _, y in got[:-1]] == [50] * (len(got) - 1) and len(got[-1][1]) == n % 50
        rows = torch.cat([torch.cat([x, y[:, None]], dim=1) for x, y in got])
        assert len(rows) == n  # every row once, standardised with the stored stats (to float32 rounding)
        np.testing.assert_allclose(in_order(rows), expected, rtol=1e-6, atol=1e-6)
        orders.append(rows)
    assert not torch.equal(orders[0], orders[1])  # a new order each epoch
    assert torch.equal(orders[0], orders[2])  # drawn from (seed, epoch)


def test_full_batch_chunks_give_the_exact_mean_gradient(prepared):
    loader = batches(prepared, batch_size=None)
    w = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    chunks = list(loader)
    assert len(chunks) == len(loader) == -(-prepared.rows["train"] // 64)  # windows of 4 blocks of 16 rows
    for x, y, rows in chunks:
        # what the model does with a row count (W / rows) and Lightning's accumulation over P batches (1 / P)
        loss = F.binary_cross_entropy_with_logits(x @ w, y, reduction="sum") / rows / len(chunks)
        loss.backward()
    raw = prepared.load("train")
    reference = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    x = (raw[:, :-1] - prepared.mean) / prepared.std
    F.binary_cross_entropy_with_logits(x @ reference, raw[:, -1]).backward()
    torch.testing.assert_close(w.grad, reference.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stop", [1, 7, 11])  # in the first window, mid-epoch, the last batch
def test_resuming_mid_epoch_continues_bit_identically(prepared, stop):
    def loader(consumed=None):
        return batches(prepared, batch_size=50, shuffle=True, epoch=lambda: 2, processed=consumed)

    uninterrupted = [y for _, y in loader()]
    done = [0]
    first = loader(consumed=lambda: done[0])
    seen = []
    for _, y in first:
        seen.append(y)
        done[0] += 1
        if done[0] == stop:
            next(iter([]), None)
            break
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [y for _, y in resumed]
    assert len(seen) + len(rest) == len(uninterrupted)
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, uninterrupted, strict=True))


def test_the_state_follows_the_consumer_not_the_prefetching_loader(prepared):
    # The Trainer fetches one batch ahead: the loader has yielded batch k + 1 when batch k is processed.
    done = [0]
    loader = batches(prepared, batch_size=50, shuffle=True, epoch=lambda: 0, processed=lambda: done[0])
    iterator = iter(loader)
    ahead = [next(iterator) for _ in range(6)]
    done[0] = 5
    resumed = batches(prepared, batch_size=50, shuffle=True, epoch=lambda: 0)
    resumed.load_state_dict(loader.state_dict())
    assert torch.equal(next(iter(resumed))[1], ahead[5][1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(rank: int, url: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    data = PreparedData.read(url)
    # full batch: each process's chunks, weighted, then DDP's average of the two gradients
    w = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    full = batches(data, batch_size=None)
    chunks = list(full)
    for x, y, rows in chunks:
        (F.binary_cross_entropy_with_logits(x @ w, y, reduction="sum") * 2 / rows / len(chunks)).backward()
    torch.distributed.all_reduce(w.grad)
    w.grad /= 2
    rows_full = sum(len(y) for _, y, _ in chunks)
    # minibatches: as many on each process, from disjoint rows
    mini = [y for _, y in batches(data, batch_size=20, shuffle=True, epoch=lambda: 0)]
    torch.save({"grad": w.grad, "chunks": len(chunks), "rows_full": rows_full, "mini": mini}, f"{out}/{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_the_rows_exactly_in_full_mode_and_equally_in_minibatches(prepared, tmp_path):
    torch.multiprocessing.spawn(_two_processes, args=(prepared.url, _free_port(), str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    n = prepared.rows["train"]
    assert results[0]["chunks"] == results[1]["chunks"]  # padded to the same count: DDP steps in lockstep
    assert results[0]["rows_full"] + results[1]["rows_full"] == n  # every row once across the two
    raw = prepared.load("train")
    reference = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    x = (raw[:, :-1] - prepared.mean) / prepared.std
    F.binary_cross_entropy_with_logits(x @ reference, raw[:, -1]).backward()
    for result in results:
        torch.testing.assert_close(result["grad"], reference.grad, rtol=1e-6, atol=1e-7)
    mini = [r["mini"] for r in results]
    assert len(mini[0]) == len(mini[1]) > 0 and all(len(y) == 20 for y in mini[0] + mini[1])
    assert 2 * 20 * len(mini[0]) > n - 2 * (16 + 20)  # at most a block and a batch per process dropped
    assert isinstance(Path(prepared.url), Path)
    assert np.isfinite(results[0]["grad"].numpy()).all()


# -- through the data module and the CLI ------------------------------------------------------------------

QUIET = [
    *("--trainer.accelerator", "cpu"),
    *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
]


def fit(root: Path, dataset: str, *extra: str) -> dict:
    """``logreg fit`` on ``dataset``; the run's last.ckpt."""
    main(["fit", "--data.dataset", dataset, *QUIET, "--trainer.default_root_dir", str(root), *extra])
    (last,) = sorted(root.glob("*/version_*/checkpoints/last.ckpt"))[-1:]
    return torch.load(last, weights_only=False)


def gradient_descent(data: PreparedData, lr: float, epochs: int) -> torch.Tensor:
    """In-memory full-batch gradient descent on the prepared training rows: (w..., b) in float32."""
    raw = data.load("train")
    x, y = (raw[:, :-1] - data.mean) / data.std, raw[:, -1]
    linear = torch.nn.Linear(x.shape[1], 1)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.SGD(linear.parameters(), lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(linear(x).squeeze(-1), y).backward()
        optimizer.step()
    return torch.cat([linear.weight[0], linear.bias]).detach()


def weights(checkpoint: dict) -> torch.Tensor:
    state = checkpoint["state_dict"]
    return torch.cat([state["linear.weight"][0], state["linear.bias"]])


@pytest.fixture(scope="module")
def banknote_prepared(tmp_path_factory) -> PreparedData:
    out = tmp_path_factory.mktemp("banknote") / "prepared"
    prepare("banknote", out)
    return PreparedData.read(str(out))


@pytest.mark.parametrize("source", ["banknote", "synthetic"])
def test_full_batch_on_streamed_chunks_is_in_memory_gradient_descent(tmp_path, banknote_prepared, prepared, source):
    # banknote: 809 training rows in blocks of 13, chunks of 104 rows (8 chunks, the last of 81);
    # synthetic: 587 rows in blocks of 16, chunks of 112 (6 chunks, the last of 27). N is no multiple of either.
    data = banknote_prepared if source == "banknote" else prepared
    chunk = "100"
    checkpoint = fit(
        tmp_path,
        data.url,
        *("--data", STREAMED),  # chunk_rows is the streamed module's own argument
        "--data.batch_mode",
        "full",
        "--data.chunk_rows",
        chunk,
        "--model.lr",
        "2",
        "--trainer.max_epochs",
        "6",
    )
    assert checkpoint["global_step"] == 6  # one update per epoch
    reference = gradient_descent(data, lr=2.0, epochs=6)
    assert reference.abs().min() > 0.01  # trained: the comparison is not between zeros
    torch.testing.assert_close(weights(checkpoint), reference, rtol=0, atol=1e-6)


def fit_on_two_processes(root: Path, dataset: str, *extra: str) -> dict:
    """``logreg fit`` with configs/ddp.yaml on 2 CPU processes (gloo); the run's last.ckpt."""
    ddp = ["--config", "configs/ddp.yaml", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    args = ["fit", "--data.dataset", dataset, *QUIET[2:], "--trainer.default_root_dir", str(root), *extra, *ddp]
    result = subprocess.run(
        [sys.executable, "-m", "logreg", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = root.glob("*/version_0/checkpoints/last.ckpt")
    return torch.load(last, weights_only=False)


@pytest.mark.slow
def test_full_batch_on_two_processes_is_the_same_gradient_descent(tmp_path, prepared):
    args = ["--data", STREAMED, "--data.batch_mode", "full", "--data.chunk_rows", "100", "--model.lr", "2"]
    args += ["--trainer.max_epochs", "6"]
    checkpoint = fit_on_two_processes(tmp_path, prepared.url, *args)
    assert checkpoint["global_step"] == 6
    torch.testing.assert_close(weights(checkpoint), gradient_descent(prepared, 2.0, 6), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_minibatches_on_two_processes_take_equal_steps(tmp_path, prepared):
    # 587 rows, 2 processes, 20 rows each per update: 14 updates per epoch, up to a block and a batch each left out
    args = ["--data.batch_mode", "minibatch", "--data.batch_size", "20", "--trainer.max_epochs", "3"]
    checkpoint = fit_on_two_processes(tmp_path, prepared.url, *args)
    n = prepared.rows["train"]
    assert 3 * ((n - 2 * (16 + 20)) // 40) <= checkpoint["global_step"] <= 3 * (n // 40)
    assert weights(checkpoint).abs().min() > 0


@pytest.mark.parametrize("mode", ["minibatch", "example"])
def test_minibatch_and_example_modes_take_one_update_per_batch(tmp_path, prepared, mode):
    checkpoint = fit(
        tmp_path, prepared.url, "--data.batch_mode", mode, "--data.batch_size", "50", "--trainer.max_epochs", "2"
    )
    n = prepared.rows["train"]
    assert checkpoint["global_step"] == 2 * (-(-n // 50) if mode == "minibatch" else n)
    assert weights(checkpoint).abs().min() > 0


def test_a_resumed_streamed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, prepared):
    # 587 rows in batches of 50: 12 updates per epoch. The uninterrupted run also saves at steps 17 (inside the
    # second epoch, after a window of 4 blocks) and 24 (an epoch's end); each resumed run must end on its weights.
    args = ["--data", STREAMED, "--data.batch_mode", "minibatch", "--data.batch_size", "50", "--model.lr", "0.5"]
    args += ["--data.chunk_rows", "64"]
    every = ["--trainer.callbacks+", "ModelCheckpoint", "--trainer.callbacks.every_n_train_steps", "17"]
    every += ["--trainer.callbacks.save_top_k", "-1", "--trainer.callbacks.filename", "{step}"]
    whole = fit(tmp_path / "whole", prepared.url, *args, "--trainer.max_epochs", "4", *every)
    assert whole["global_step"] == 48
    (mid,) = tmp_path.glob("whole/minibatch/version_0/checkpoints/step=17.ckpt")
    assert torch.load(mid, weights_only=False)["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 1
    resumed = fit(tmp_path / "resumed", prepared.url, *args, "--trainer.max_epochs", "4", "--ckpt_path", str(mid))
    assert resumed["global_step"] == 48
    assert torch.equal(weights(resumed), weights(whole))
    fit(tmp_path / "split", prepared.url, *args, "--trainer.max_epochs", "2")  # ends at an epoch's end
    resumed = fit(tmp_path / "split", prepared.url, *args, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    assert resumed["global_step"] == 48
    assert torch.equal(weights(resumed), weights(whole))


def test_predict_streams_the_prepared_test_split_and_any_csv(tmp_path, prepared, monkeypatch):
    checkpoint = fit(
        tmp_path, prepared.url, "--data.batch_mode", "full", "--model.lr", "1", "--trainer.max_epochs", "3"
    )
    (ckpt,) = tmp_path.glob("full/version_0/checkpoints/last.ckpt")
    w, b = checkpoint["state_dict"]["linear.weight"][0], checkpoint["state_dict"]["linear.bias"]
    raw = prepared.load("test")
    expected = torch.sigmoid((raw[:, :-1] - prepared.mean) / prepared.std @ w + b)
    out = tmp_path / "test_split.csv"
    main(["predict", "--ckpt_path", str(ckpt), "--data.dataset", prepared.url, "--prediction.output", str(out), *QUIET])
    got = np.loadtxt(out, delimiter=",", skiprows=1)
    assert got[:, 0].tolist() == list(range(len(raw)))
    np.testing.assert_allclose(got[:, 1], expected.numpy(), rtol=1e-6)
    # a CSV file is read in pieces (here of 1 kB, so ~40 of them), its columns matched by name
    monkeypatch.setattr("logreg.data.csv.PIECE_BYTES", 1000)
    csv = tmp_path / "new.csv"
    table = raw.numpy()
    csv.write_text("x2,x0,x1\n" + "".join(f"{r[2]:.9g},{r[0]:.9g},{r[1]:.9g}\n" for r in table))
    out = tmp_path / "new.predictions.csv"
    main(["predict", "--ckpt_path", str(ckpt), "--data.dataset", str(csv), "--prediction.output", str(out), *QUIET])
    got = np.loadtxt(out, delimiter=",", skiprows=1)
    assert got[:, 0].tolist() == list(range(len(raw)))
    np.testing.assert_allclose(got[:, 1], expected.numpy(), rtol=1e-6)


def test_test_on_the_prepared_directory_scores_its_test_split(tmp_path, prepared):
    fit(tmp_path, prepared.url, "--data.batch_mode", "full", "--model.lr", "1", "--trainer.max_epochs", "3")
    (ckpt,) = tmp_path.glob("full/version_0/checkpoints/last.ckpt")
    cli = build_cli(["--data.dataset", prepared.url, *QUIET, "--trainer.default_root_dir", str(tmp_path)], run=False)
    (results,) = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False)
    checkpoint = torch.load(ckpt, weights_only=False)
    w, b = checkpoint["state_dict"]["linear.weight"][0], checkpoint["state_dict"]["linear.bias"]
    raw = prepared.load("test")
    logits = (raw[:, :-1] - prepared.mean) / prepared.std @ w + b
    assert results["test/loss"] == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, raw[:, -1]).item(), rel=1e-5
    )
    assert results["test/acc"] == pytest.approx(((logits > 0).float() == raw[:, -1]).float().mean().item())
