"""Autograd walk-through of one logistic-regression neuron; exits non-zero if a value is off.

Usage: python scripts/autograd_demo.py
"""

from logreg.lessons.autograd_demo import main

if __name__ == "__main__":
    raise SystemExit(main())
