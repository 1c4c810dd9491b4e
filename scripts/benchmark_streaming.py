"""Streaming against in-memory training: peak memory while training, throughput, and `logreg prepare` on a CSV.

python scripts/benchmark_streaming.py --rows 50000000 --json out.json   # the issue's sizes (long, 7 GB of disk)
python scripts/benchmark_streaming.py --rows 1000000 --skip throughput  # a quick look
"""

from logreg.benchmarks.streaming import main

if __name__ == "__main__":
    main()
