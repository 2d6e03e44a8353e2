"""Evaluation: metrics, the paper's and the full-catalogue protocols, baselines, and the
quality benchmark that runs them all on the same test cases."""
