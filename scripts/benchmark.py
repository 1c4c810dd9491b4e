"""Time the project's training path against a hand-written loop and a naive Lightning template.

python scripts/benchmark.py --json out.json            # the full benchmark (minutes)
python scripts/benchmark.py --rows 20000 --repeats 1   # a quick look
"""

from logreg.benchmark import main

if __name__ == "__main__":
    main()
