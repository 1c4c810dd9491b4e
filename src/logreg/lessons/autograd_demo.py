"""The classic autograd walk-through of one logistic-regression neuron, with every value checked.

One input x = 1.23 with target y = 1 meets parameters w = 0.23 and b = 0.1. The forward pass is
z = w * x + b, a = sigmoid(z), L = BCE(a, y); the gradient dL/dw, dL/db comes out three ways (autograd.grad,
backward and .grad, and the closed form (a - y) * x, (a - y)), which must agree. A second part shows why the
model trains on logits: where sigmoid rounds to 0 or 1 in float32, sigmoid-then-BCE loses the loss and its
gradient, while BCE-with-logits keeps both.

``python scripts/autograd_demo.py`` prints the steps and exits non-zero if a value disagrees with the
expected one (the textbook's four decimals, so agreement means within 5e-5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: The walk-through's published values, rounded to four decimals.
EXPECTED = {
    "z": 0.3829,
    "a": 0.5946,
    "bce": 0.5199,
    "bce_with_logits": 0.5199,
    "dL/dw": -0.4987,
    "dL/db": -0.4054,
}
ROUNDING = 5e-5  # half a unit in the fourth decimal

#: (z, y) pairs where float32 sigmoid saturates: sigmoid(-100) rounds to 0, sigmoid(40) to 1.
SATURATING = ((-100.0, 1.0), (40.0, 0.0))


def walk_through(w: float = 0.23, b: float = 0.1, x: float = 1.23, y: float = 1.0) -> dict[str, float]:
    """The forward values and the gradient of the loss, each gradient computed three ways.

    >>> values = walk_through()
    >>> round(values["z"], 4), round(values["a"], 4), round(values["bce"], 4)
    (0.3829, 0.5946, 0.5199)
    """
    w_t = torch.tensor(w, requires_grad=True)
    b_t = torch.tensor(b, requires_grad=True)
    x_t, y_t = torch.tensor(x), torch.tensor(y)

    z = w_t * x_t + b_t
    a = torch.sigmoid(z)
    bce = F.binary_cross_entropy(a, y_t)
    bce_with_logits = F.binary_cross_entropy_with_logits(z, y_t)

    # retain_graph keeps the graph alive so backward() below can walk it a second time.
    grad_w, grad_b = torch.autograd.grad(bce, (w_t, b_t), retain_graph=True)
    bce.backward()
    return {
        "z": z.item(),
        "a": a.item(),
        "bce": bce.item(),
        "bce_with_logits": bce_with_logits.item(),
        "dL/dw": grad_w.item(),
        "dL/db": grad_b.item(),
        "dL/dw (backward)": w_t.grad.item(),
        "dL/db (backward)": b_t.grad.item(),
        "dL/dw (closed form)": ((a - y_t) * x_t).item(),
        "dL/db (closed form)": (a - y_t).item(),
    }


def saturation(z: float, y: float) -> dict[str, float]:
    """Loss and dL/dz at a large logit, through sigmoid-then-BCE, BCE-with-logits, and exactly.

    The exact values use float64 and the identities L = max(z, 0) - z * y + log(1 + exp(-|z|)) and
    dL/dz = sigmoid(z) - y.

    >>> values = saturation(40.0, 0.0)
    >>> values["sigmoid"], values["bce"], values["bce_with_logits"], values["exact"]
    (1.0, 100.0, 40.0, 40.0)
    """
    z_naive = torch.tensor(z, requires_grad=True)
    a = torch.sigmoid(z_naive)
    by_hand = -(y * torch.log(a) + (1 - y) * torch.log(1 - a))  # the formula as written: log(0) = -inf
    bce = F.binary_cross_entropy(a, torch.tensor(y))  # PyTorch clamps log at -100, so the loss stops at 100
    (grad_naive,) = torch.autograd.grad(bce, z_naive)

    z_logits = torch.tensor(z, requires_grad=True)
    bce_with_logits = F.binary_cross_entropy_with_logits(z_logits, torch.tensor(y))
    (grad_logits,) = torch.autograd.grad(bce_with_logits, z_logits)
    return {
        "sigmoid": a.item(),
        "by_hand": by_hand.item(),
        "bce": bce.item(),
        "bce_with_logits": bce_with_logits.item(),
        "exact": max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z))),
        "grad_bce": grad_naive.item(),
        "grad_with_logits": grad_logits.item(),
        "grad_exact": 1 / (1 + math.exp(-z)) - y,
    }


def check(
    values: dict[str, float], saturated: dict[tuple[float, float], dict[str, float]], expected: dict[str, float]
) -> list[str]:
    """Every disagreement, as one sentence each; empty when all values are as expected."""
    problems = [
        f"{name} = {values[name]:.6f}, expected {want:.4f}"
        for name, want in expected.items()
        if not abs(values[name] - want) <= ROUNDING
    ]
    for name in ("dL/dw", "dL/db"):
        for way in ("backward", "closed form"):
            other = values[f"{name} ({way})"]
            if not math.isclose(values[name], other, rel_tol=1e-6, abs_tol=1e-7):
                problems.append(f"{name} by {way} = {other:.6f} differs from autograd.grad's {values[name]:.6f}")
    for (z, y), s in saturated.items():
        if not math.isclose(s["bce_with_logits"], s["exact"], rel_tol=1e-6):
            problems.append(
                f"at z = {z:g}, y = {y:g} BCE-with-logits = {s['bce_with_logits']} but the exact loss is {s['exact']}"
            )
        if not math.isclose(s["grad_with_logits"], s["grad_exact"], rel_tol=1e-6):
            problems.append(
                f"at z = {z:g}, y = {y:g} the with-logits dL/dz = {s['grad_with_logits']}, exact {s['grad_exact']}"
            )
        if math.isclose(s["grad_bce"], s["grad_exact"], rel_tol=1e-3):
            problems.append(f"at z = {z:g}, y = {y:g} sigmoid-then-BCE did not saturate: nothing to demonstrate")
    return problems


def report(values: dict[str, float], saturated: dict[tuple[float, float], dict[str, float]]) -> str:
    """The walk-through as text, one step per line."""
    v = values
    lines = [
        "Parameters w = 0.23, b = 0.1 (requires_grad); input x = 1.23, target y = 1",
        f"  weighted sum   z = w*x + b                     = {v['z']:.4f}",
        f"  activation     a = sigmoid(z)                  = {v['a']:.4f}",
        f"  loss           BCE(a, y)                       = {v['bce']:.4f}",
        f"  same loss      BCE-with-logits(z, y), stable   = {v['bce_with_logits']:.4f}",
        "Gradient                      dL/dw     dL/db",
        f"  autograd.grad(retain_graph) {v['dL/dw']:8.4f}  {v['dL/db']:8.4f}",
        f"  loss.backward(), .grad      {v['dL/dw (backward)']:8.4f}  {v['dL/db (backward)']:8.4f}",
        f"  closed form (a-y)*x, (a-y)  {v['dL/dw (closed form)']:8.4f}  {v['dL/db (closed form)']:8.4f}",
        "Why the model takes logits: float32 sigmoid saturates at large |z|",
    ]
    for (z, y), s in saturated.items():
        lines += [
            f"  z = {z:g}, y = {y:g}: sigmoid(z) rounds to {s['sigmoid']:g}",
            f"    -[y log a + (1-y) log(1-a)]  = {s['by_hand']:g}   (the formula as written)",
            f"    BCE(sigmoid(z), y)      loss = {s['bce']:<8g} dL/dz = {s['grad_bce']:g}   (log clamped at -100)",
            f"    BCE-with-logits(z, y)   loss = {s['bce_with_logits']:<8g} dL/dz = {s['grad_with_logits']:g}",
            f"    exact, in float64       loss = {s['exact']:<8g} dL/dz = {s['grad_exact']:g}",
        ]
    lines.append(
        "  The with-logits loss stays exact (about |z|) and keeps the gradient a - y; through sigmoid it vanishes."
    )
    return "\n".join(lines)


def main(expected: dict[str, float] | None = None) -> int:
    """Print the walk-through; return 0 when every value is as expected, else 1 after naming the disagreements."""
    values = walk_through()
    saturated = {(z, y): saturation(z, y) for z, y in SATURATING}
    print(report(values, saturated))
    problems = check(values, saturated, EXPECTED if expected is None else expected)
    for problem in problems:
        print(f"error: {problem}")
    return 1 if problems else 0
