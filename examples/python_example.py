"""A training step and inference with the Python binding.

Run from the repository after building:
  BNORM_LIBRARY=build/release/libbnorm.so.0 PYTHONPATH=python /usr/bin/python3 examples/python_example.py
"""
import numpy as np

import bnorm

rng = np.random.default_rng(0)
x = (100 + rng.standard_normal((8, 14, 14, 16))).astype(np.float32)  # NHWC, C = 16
gamma = np.ones(16, np.float32)
beta = np.zeros(16, np.float32)
running_mean = np.zeros(16, np.float32)
running_var = np.ones(16, np.float32)

with bnorm.Context(threads=2) as ctx:
    y, mean, invstd = bnorm.batch_norm_training(x, gamma, beta, running_mean, running_var,
                                                momentum=0.1, eps=1e-5, layout="NHWC", ctx=ctx)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dgamma, dbeta = bnorm.batch_norm_backward(x, dy, mean, invstd, gamma, layout="NHWC",
                                                  ctx=ctx)
    y_eval = bnorm.batch_norm(x, running_mean, running_var, gamma, beta, training=False,
                              layout="NHWC", ctx=ctx)

print(f"bnorm {bnorm.version()} on {bnorm.active_target()}")
print(f"batch mean[0] = {mean[0]:.4f}, y std = {y.std():.4f}, dgamma[0] = {dgamma[0]:.4f}")
try:
    bnorm.batch_norm_training(x, eps=-1.0, layout="NHWC")
except bnorm.Error as e:
    print(f"error as expected: {e}")
