import math
import subprocess
import sys
from pathlib import Path

import pytest

from logreg.lessons.autograd_demo import EXPECTED, SATURATING, check, main, saturation, walk_through

SCRIPT = Path(__file__).parents[1] / "scripts" / "autograd_demo.py"


@pytest.mark.slow  # a fresh interpreter imports torch and lightning
def test_script_prints_the_walk_through_values_and_exits_zero():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for value in ("0.3829", "0.5946", "0.5199", "-0.4987", "-0.4054"):
        assert value in result.stdout, value
    assert result.stdout.count("-0.4987") == 3  # autograd.grad, backward, closed form
    assert "error" not in result.stdout


def test_values_match_the_published_walk_through_and_the_float64_formulas():
    values = walk_through()
    for name, want in EXPECTED.items():
        assert values[name] == pytest.approx(want, abs=5e-5), name
    # independently, in float64: z = w x + b, a = sigmoid(z), L = -log a, dL/dw = (a - 1) x
    z = 0.23 * 1.23 + 0.1
    a = 1 / (1 + math.exp(-z))
    assert values["z"] == pytest.approx(z, rel=1e-6)
    assert values["bce"] == pytest.approx(-math.log(a), rel=1e-6)
    for way in ("", " (backward)", " (closed form)"):
        assert values[f"dL/dw{way}"] == pytest.approx((a - 1) * 1.23, rel=1e-5)
        assert values[f"dL/db{way}"] == pytest.approx(a - 1, rel=1e-5)


@pytest.mark.parametrize(("z", "y"), SATURATING)
def test_sigmoid_then_bce_saturates_where_the_logits_version_is_exact(z, y):
    s = saturation(z, y)
    assert s["sigmoid"] == (0.0 if z < 0 else 1.0)
    assert s["by_hand"] == math.inf
    assert s["bce"] == 100.0  # log(0) clamped at -100
    assert s["grad_bce"] == 0.0  # the gradient vanishes through the saturated sigmoid
    assert s["bce_with_logits"] == pytest.approx(abs(z), rel=1e-6)
    assert s["grad_with_logits"] == pytest.approx(1.0 if y == 0 else -1.0)  # a - y


def test_a_disagreeing_value_is_named_and_makes_main_return_non_zero(capsys):
    assert main() == 0
    capsys.readouterr()
    assert main({**EXPECTED, "dL/dw": -0.4988}) == 1
    assert "error: dL/dw = -0.498" in capsys.readouterr().out


def test_check_flags_gradients_that_disagree_between_the_three_ways():
    values = walk_through()
    saturated = {(z, y): saturation(z, y) for z, y in SATURATING}
    assert check(values, saturated, EXPECTED) == []
    values["dL/db (closed form)"] += 1e-3
    [problem] = check(values, saturated, EXPECTED)
    assert problem.startswith("dL/db by closed form = -0.4044") and "differs from autograd.grad's -0.4054" in problem
