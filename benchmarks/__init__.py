"""The benchmark suite, installed as fastops.benchmarks (run it with python -m fastops bench)."""
