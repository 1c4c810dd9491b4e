"""A user's own CSV file end to end: reading it, `logreg fit` against pandas + scikit-learn, `logreg prepare`.

python scripts/benchmark_csv.py --json out.json            # 1,000,000 x 32, three interleaved runs (minutes)
python scripts/benchmark_csv.py --rows 100000 --repeats 1  # a quick look
"""

from logreg.benchmarks.end_to_end import main

if __name__ == "__main__":
    main()
