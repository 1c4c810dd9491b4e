import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from logreg.prepare import prepare
from logreg.streaming import PreparedData, StreamingBatches, is_prepared


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> PreparedData:
    """1001 synthetic rows in blocks of 16: no count (train rows, windows, batches) divides another."""
    out = tmp_path_factory.mktemp("streaming") / "prepared"
    prepare("synthetic", out, synthetic_rows=1001, synthetic_features=3, block_rows=16)
    return PreparedData.read(str(out))


def batches(data: PreparedData, **args) -> StreamingBatches:
    return StreamingBatches(data, "train", data.mean, data.std, window_rows=64, **args)


def as_set(rows: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in rows.tolist()}


def test_a_prepared_directory_is_recognised(prepared, tmp_path):
    assert is_prepared(prepared.url) and is_prepared("s3://bucket/prepared")
    assert not is_prepared(str(tmp_path)) and not is_prepared("banknote")


def test_minibatches_cover_every_row_once_standardised_and_reshuffled_each_epoch(prepared):
    n = prepared.rows["train"]
    raw = prepared.load("train")
    expected = as_set(torch.cat([(raw[:, :-1] - prepared.mean) / prepared.std, raw[:, -1:]], dim=1))
    epoch = [0]
    loader = batches(prepared, batch_size=50, shuffle=True, epoch=lambda: epoch[0])
    orders = []
    for e in (0, 1, 0):
        epoch[0] = e
        got = list(loader)
        assert len(got) == len(loader) == -(-n // 50)
        assert [len(y) for _, y in got[:-1]] == [50] * (len(got) - 1) and len(got[-1][1]) == n % 50
        rows = torch.cat([torch.cat([x, y[:, None]], dim=1) for x, y in got])
        assert len(rows) == n and as_set(rows) == expected  # every row once, standardised with the stored stats
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
