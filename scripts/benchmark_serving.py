"""`logreg serve` against the in-process module: requests/s and p50/p99 latency at 1, 8 and 32 clients, LitServe's
batching off and on (needs the serve extra: pip install -e ".[serve]").

python scripts/benchmark_serving.py --json out.json          # the figures of docs/benchmarks.md
python scripts/benchmark_serving.py --seconds 2 --repeats 1   # a quick look
"""

from logreg.benchmarks.serving import main

if __name__ == "__main__":
    main()
