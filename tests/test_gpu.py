"""Training on a CUDA device: run where one is visible, skipped elsewhere (the ``gpu`` marker, see conftest.py)."""

import functools

import lightning as L
import pytest
import torch

from logreg import LogisticRegression, TabularDataModule

pytestmark = pytest.mark.gpu


def train(accelerator: str, **data_args) -> tuple[LogisticRegression, TabularDataModule, L.Trainer]:
    dm = TabularDataModule(**data_args)
    model = LogisticRegression(num_features=4, lr=0.5, optimizer=functools.partial(torch.optim.SGD, momentum=0.5))
    trainer = L.Trainer(
        accelerator=accelerator, max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=dm)
    return model, dm, trainer


def test_accelerator_auto_trains_on_the_gpu_with_the_data_held_there():
    _, dm, trainer = train("auto", batch_mode="minibatch", batch_size=32)
    assert trainer.strategy.root_device.type == "cuda"  # (the model itself is back on the CPU after fit)
    x_train, _ = dm.split("train")
    assert x_train.device.type == "cuda"
    # the batches served are already on the GPU (views of the held split): nothing is copied from the host per step
    bx, by = next(iter(dm.train_dataloader()))  # the first batch (one update)
    assert bx.device.type == by.device.type == "cuda"
    full_dm = TabularDataModule(batch_mode="full")
    full_dm.trainer = trainer
    full_dm.setup("fit")
    ((fx, _),) = full_dm.train_dataloader()  # one batch, one update: the whole split
    assert fx.data_ptr() == full_dm.split("train")[0].data_ptr()


@pytest.mark.parametrize("batch_mode", ["full", "example", "minibatch"])
def test_gpu_training_ends_with_the_cpu_weights(batch_mode):
    # float32 on both; the GPU's reductions add in another order, so the weights agree closely, not bitwise
    gpu_model = train("gpu", batch_mode=batch_mode)[0]
    cpu_model = train("cpu", batch_mode=batch_mode)[0]
    for gpu_param, cpu_param in zip(gpu_model.parameters(), cpu_model.parameters(), strict=True):
        torch.testing.assert_close(gpu_param.detach().cpu(), cpu_param.detach(), rtol=1e-4, atol=1e-5)
