"""Time the project's training path against a hand-written loop and a naive Lightning template.

python scripts/benchmark.py --json out.json            # the full benchmark (minutes)
python scripts/benchmark.py --rows 20000 --repeats 1   # a quick look
python scripts/benchmark.py --ablate --modes example --rows 5000 --json out.json  # what each callback costs
"""

from logreg.benchmarks.training import main

if __name__ == "__main__":
    main()
