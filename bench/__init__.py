"""Benchmarks: competing ways side by side in one run; results in bench/results/."""
