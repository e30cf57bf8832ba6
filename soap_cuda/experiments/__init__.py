"""Experiment tooling: offline MNIST data, training runs, learning-rate sweeps with seeds and
bootstrap intervals, the gain-matched backprop control, and Markdown/PNG reports."""
