"""Interleaved A/B timing of the issue-target cases: torch and fastops called alternately, one
call each per pair, and the median of the per-pair ratios reported with its quartiles.

pytest-benchmark times all rounds of one implementation, then all of the other; on a shared VM
a slow spell of a few seconds falls on one side and moves that ratio by up to 2x. Alternating
calls puts both sides in the same spell, so the ratio moves much less. Same callables and
inputs as the suites (their IMPLS and input shapes); run from the repository root:

    python benchmarks/interleaved.py [--pairs 30] [--filter SUBSTRING]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("FASTOPS_BENCH_QUICK", "1")  # the suites' IMPLS without torch.compile

import bench_conv2d  # noqa: E402
import bench_cross_entropy  # noqa: E402
import bench_linear  # noqa: E402
from common import _step, randn, sync  # noqa: E402


def linear_inputs(rows, in_features, out_features, backward):
    return [randn(rows, in_features, requires_grad=backward),
            randn(out_features, in_features, requires_grad=backward, scale=in_features**-0.5),
            randn(out_features, requires_grad=backward)]


def cross_entropy_inputs(rows, classes, backward):
    return [randn(rows, classes, requires_grad=backward),
            bench_cross_entropy.targets(rows, classes)]


def conv2d_inputs(batch, in_channels, size, out_channels, kernel, padding, backward):
    fan_in = in_channels * kernel * kernel
    return [randn(batch, in_channels, *size, requires_grad=backward),
            randn(out_channels, in_channels, kernel, kernel, requires_grad=backward,
                  scale=fan_in**-0.5),
            randn(out_channels, requires_grad=backward), padding]


SUITES = [  # (op, cases, impls, inputs(case values..., backward))
    ("linear_relu", bench_linear.CASES, bench_linear.IMPLS, linear_inputs),
    ("cross_entropy", bench_cross_entropy.CASES, bench_cross_entropy.IMPLS, cross_entropy_inputs),
    ("conv2d_relu", bench_conv2d.CASES, bench_conv2d.IMPLS, conv2d_inputs),
]


def interleaved_ratios(torch_run, fastops_run, pairs):
    """torch time / fastops time of `pairs` alternating calls (the order flips every pair)."""
    for run in (torch_run, fastops_run):  # warm-up
        run()
    ratios = []
    for i in range(pairs):
        order = (torch_run, fastops_run) if i % 2 == 0 else (fastops_run, torch_run)
        seconds = {}
        for run in order:
            start = time.perf_counter()
            run()
            sync()
            seconds[run] = time.perf_counter() - start
        ratios.append(seconds[torch_run] / seconds[fastops_run])
    return ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--filter", default="",
                        help="only cases whose 'op case pass' contains this")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          "speed-up = torch / fastops "
          f"per pair, median [25th, 75th percentile] of {args.pairs} pairs")
    for op, cases, impls, make_inputs in SUITES:
        for case, values in cases.items():
            for backward in (False, True):
                name = f"{op} {case} {'fwd+bwd' if backward else 'fwd'}"
                if args.filter not in name:
                    continue
                inputs = make_inputs(*values, backward)
                ratios = interleaved_ratios(_step(impls["torch"], inputs, backward),
                                            _step(impls["fastops"], inputs, backward), args.pairs)
                q1, median, q3 = statistics.quantiles(ratios, n=4)
                print(f"{name}: {median:.2f}x [{q1:.2f}, {q3:.2f}]", flush=True)


if __name__ == "__main__":
    main()
