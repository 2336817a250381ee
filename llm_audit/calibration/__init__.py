"""Calibration tasks: grokking setups trained past their peak, audited at every checkpoint.

`mnist_mlp` (MLP on 1,000 MNIST digits) and `modadd` (one-layer transformer on modular addition),
driven by `run` (`llm-audit calibrate`); `monitor` audits a user's own training loop.
"""
