import pytest
import torch

from logreg.datasets import DataError, load_banknote, make_synthetic, read_csv


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
