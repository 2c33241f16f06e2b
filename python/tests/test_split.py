"""Tests of the split-statistics functions (synchronized batch norm): stats,
stats_merge, forward_apply, backward_reduce, backward_apply.

Run: BNORM_LIBRARY=build/release/libbnorm.so.0 PYTHONPATH=python /usr/bin/python3 -m unittest discover -s python/tests

Tolerances, for a batch split along n and merged, against the whole batch (the
library's accuracy bars, as tests/split_test.cc states them):
- STAT_TOL: bnorm_stats (= the statistics of bnorm_forward_training) is within
  1e-6 of the exact values: m2 to 1e-6 of itself, the mean to 1e-6 of the
  standard deviation. The whole batch's and the merged statistics are both
  that close to the float64 reference, so they differ by at most twice that.
- y = (x - mean) * invstd * gamma + beta then moves by
  |gamma| (2e-6 + 1e-6 |xhat|), plus a few float roundings (8 u) of its terms
  on each side; 16-bit outputs may round to a neighbour (one ulp).
- The backward sums are known to SUM_TOL of the sum of the magnitudes of
  their terms (float block sums closed in double), dx to DX_TOL of the size of
  its terms; whole and split each have that error, so they differ by twice it.
"""

import unittest

import numpy as np

import bnorm
from test_bnorm import bshape, ref_stats, to_bf16

STAT_TOL = 1e-6
SUM_TOL = 1e-5
DX_TOL = 2e-5
U = 2.0 ** -24

BAD_SHAPE, BAD_ARGUMENT, TOO_FEW_VALUES = 2, 3, 5  # bnorm_status

# (layout, shape): the batch axis is first in both layouts; C = 3.
SHAPES = [("NCHW", (7, 3, 5, 6)), ("NHWC", (7, 5, 6, 3)), ("NCHW", (40, 3))]


def part_sizes(n):
    """Samples per part, in batch order: an empty part among them."""
    return [2, 0, n - 2]


def channel_axes(x, layout):
    return (0,) + tuple(range(2, x.ndim)) if layout == "NCHW" else tuple(range(x.ndim - 1))


def split(a):
    """a cut along the batch axis into parts of part_sizes(n)."""
    return np.split(a, np.cumsum(part_sizes(a.shape[0]))[:-1])


def bits(a):
    a = np.asarray(a)
    return a.dtype, a.shape, a.tobytes()


def ulp16(y, dtype):
    """One ulp of a 16-bit result (0 for float32)."""
    if dtype is None:
        return 0.0
    mantissa = 7 if dtype == "bfloat16" else 10
    return np.exp2(np.floor(np.log2(np.maximum(np.abs(y), 2.0 ** -14))) - mantissa)


def values(a, dtype):
    """A tensor's values in float64 (bf16 bits widened)."""
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


class SplitTest(unittest.TestCase):
    def setUp(self):
        self.rng = np.random.default_rng(11)

    def data(self, shape, offset=0.0, dtype=None):
        x = (offset + 2 * self.rng.standard_normal(shape)).astype(np.float32)
        if dtype == "bfloat16":
            return to_bf16(x)
        return x.astype(np.float16) if dtype == "float16" else x

    def params(self, c=3):
        gamma = self.rng.uniform(0.5, 2, c).astype(np.float32)
        beta = self.rng.uniform(-1, 1, c).astype(np.float32)
        return gamma, beta

    def assertBits(self, a, b, what=""):
        self.assertEqual(bits(a), bits(b), what)

    # ---- forward ----

    def test_one_part_is_forward_training_bitwise(self):
        cases = [(layout, shape, None, offset) for layout, shape in SHAPES
                 for offset in (0.0, 1e4)]
        cases += [("NCHW", (4, 3, 9), "float16", 3.0), ("NHWC", (4, 9, 3), "bfloat16", 3.0)]
        for layout, shape, dtype, offset in cases:
            with self.subTest(layout=layout, shape=shape, dtype=dtype, offset=offset):
                x = self.data(shape, offset, dtype)
                gamma, beta = self.params()
                rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
                rm2, rv2 = rm.copy(), rv.copy()
                y, sm, si = bnorm.batch_norm_training(x, gamma, beta, rm, rv, momentum=0.2,
                                                      eps=1e-3, layout=layout, dtype=dtype)
                count, mean, m2 = bnorm.stats(x, layout=layout, dtype=dtype)
                self.assertEqual(count, x.size // 3)
                self.assertEqual(mean.dtype, np.float64)
                merged = bnorm.stats_merge([count], mean[None], m2[None])
                self.assertEqual(merged[0], count)
                self.assertBits(merged[1], mean, "k == 1 merge changed the mean")
                self.assertBits(merged[2], m2, "k == 1 merge changed m2")
                y2, sm2, si2 = bnorm.forward_apply(x, gamma, beta, *merged, eps=1e-3,
                                                   momentum=0.2, running_mean=rm2,
                                                   running_var=rv2, layout=layout, dtype=dtype)
                for name, a, b in [("y", y2, y), ("save_mean", sm2, sm),
                                   ("save_invstd", si2, si), ("running_mean", rm2, rm),
                                   ("running_var", rv2, rv)]:
                    self.assertBits(a, b, name)

    def test_parts_merge_to_the_whole_batch(self):
        cases = [(layout, shape, None, offset) for layout, shape in SHAPES
                 for offset in (0.0, 1e4)]
        cases += [("NHWC", (7, 4, 3), "float16", 3.0), ("NCHW", (7, 3, 8), "bfloat16", 3.0)]
        for layout, shape, dtype, offset in cases:
            with self.subTest(layout=layout, shape=shape, dtype=dtype, offset=offset):
                self.check_forward_split(layout, shape, dtype, offset)

    def check_forward_split(self, layout, shape, dtype, offset):
        x = self.data(shape, offset, dtype)
        gamma, beta = self.params()
        rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
        y, sm, si = bnorm.batch_norm_training(x, gamma, beta, rm, rv, layout=layout, dtype=dtype)
        count, mean, m2 = bnorm.stats(x, layout=layout, dtype=dtype)

        parts = split(x)
        st = [bnorm.stats(p, layout=layout, dtype=dtype) for p in parts]
        with bnorm.Context(2) as ctx:  # the thread count changes no bit
            for p, s in zip(parts, st):
                for a, b in zip(bnorm.stats(p, layout=layout, dtype=dtype, ctx=ctx), s):
                    self.assertBits(a, b)
        per_sample = x.size // 3 // x.shape[0]
        self.assertEqual([s[0] for s in st], [k * per_sample for k in part_sizes(x.shape[0])])
        np.testing.assert_array_equal(st[1][1], 0)  # the empty part: count 0, zeros
        np.testing.assert_array_equal(st[1][2], 0)
        total, gmean, gm2 = bnorm.stats_merge([s[0] for s in st], np.stack([s[1] for s in st]),
                                              np.stack([s[2] for s in st]))
        self.assertEqual(total, count)

        # Both within STAT_TOL of the float64 reference, hence 2 STAT_TOL apart.
        m_ref, v_ref = ref_stats(values(x, dtype), layout)
        std = np.sqrt(v_ref)
        for mu, s2 in [(mean, m2), (gmean, gm2)]:
            np.testing.assert_allclose(s2, v_ref * count, rtol=STAT_TOL, atol=0)
            np.testing.assert_allclose(mu, m_ref, rtol=0,
                                       atol=STAT_TOL * std.min() + 2.0 ** -50 * abs(offset))
        np.testing.assert_allclose(gm2, m2, rtol=2 * STAT_TOL, atol=0)
        np.testing.assert_allclose(gmean, mean, rtol=0,
                                   atol=2 * STAT_TOL * std.min() + 2.0 ** -50 * abs(offset))

        outs = []
        for p in parts:  # each rank keeps its own running statistics
            prm, prv = np.zeros(3, np.float32), np.ones(3, np.float32)
            outs.append(bnorm.forward_apply(p, gamma, beta, total, gmean, gm2, running_mean=prm,
                                            running_var=prv, layout=layout, dtype=dtype)
                        + (prm, prv))
        self.assertEqual(outs[1][0].shape, parts[1].shape)  # the empty part's y is empty
        for o in outs[1:]:  # the per-channel outputs are the same bits on every part
            for a, b in zip(o[1:], outs[0][1:]):
                self.assertBits(a, b)
        _, psm, psi, prm, prv = outs[0]
        np.testing.assert_allclose(psm, sm, rtol=2 * U, atol=2 * STAT_TOL * std.min())
        np.testing.assert_allclose(psi, si, rtol=2 * STAT_TOL + 2 * U)
        np.testing.assert_allclose(prm, rm, rtol=2 * U, atol=2 * STAT_TOL * std.min())
        np.testing.assert_allclose(prv, rv, rtol=4 * STAT_TOL + 2 * U)

        got = values(np.concatenate([o[0] for o in outs]), dtype)
        want = values(y, dtype)
        s = bshape(3, x.ndim, layout)
        g, b = np.abs(gamma).reshape(s), np.abs(beta).reshape(s)
        xhat = np.abs((values(x, dtype) - sm.reshape(s)) * si.reshape(s))
        tol = (g * (2 * STAT_TOL + STAT_TOL * xhat) + 8 * U * (g * xhat + g + b)
               + ulp16(want, dtype))
        bad = np.abs(got - want) > tol
        self.assertFalse(bad.any(), f"{bad.sum()} y elements off, worst "
                         f"{np.max(np.abs(got - want) - tol)} beyond the tolerance")

    # ---- backward ----

    def test_one_part_is_backward_bitwise(self):
        cases = [(layout, shape, None) for layout, shape in SHAPES]
        cases += [("NCHW", (4, 3, 9), "float16"), ("NHWC", (4, 9, 3), "bfloat16")]
        for layout, shape, dtype in cases:
            with self.subTest(layout=layout, shape=shape, dtype=dtype):
                x, dy = self.data(shape, 1.0, dtype), self.data(shape, 0.0, dtype)
                gamma, _ = self.params()
                _, sm, si = bnorm.batch_norm_training(x, gamma, layout=layout, dtype=dtype)
                dx, dg, db = bnorm.batch_norm_backward(x, dy, sm, si, gamma, layout=layout,
                                                       dtype=dtype)
                sum_dy, sum_dy_xmu = bnorm.backward_reduce(x, dy, sm, layout=layout, dtype=dtype)
                self.assertEqual(sum_dy.dtype, np.float64)
                dx2, dg2, db2 = bnorm.backward_apply(x, dy, gamma, sm, si, x.size // 3, sum_dy,
                                                     sum_dy_xmu, layout=layout, dtype=dtype)
                self.assertBits(dx2, dx, "dx")
                self.assertBits(dg2, dg, "dgamma")
                self.assertBits(db2, db, "dbeta")
                none, dg3, db3 = bnorm.backward_apply(x, dy, gamma, sm, si, x.size // 3, sum_dy,
                                                      sum_dy_xmu, layout=layout, dtype=dtype,
                                                      need_dx=False)
                self.assertIsNone(none)
                self.assertBits(dg3, dg)
                self.assertBits(db3, db)

    def test_parts_add_up_to_the_whole_batch(self):
        cases = [(layout, shape, None) for layout, shape in SHAPES]
        cases += [("NHWC", (7, 4, 3), "float16"), ("NCHW", (7, 3, 8), "bfloat16")]
        for layout, shape, dtype in cases:
            with self.subTest(layout=layout, shape=shape, dtype=dtype):
                self.check_backward_split(layout, shape, dtype)

    def check_backward_split(self, layout, shape, dtype):
        x, dy = self.data(shape, 1.0, dtype), self.data(shape, 0.0, dtype)
        gamma, _ = self.params()
        _, sm, si = bnorm.batch_norm_training(x, gamma, layout=layout, dtype=dtype)
        dx, dg, db = bnorm.batch_norm_backward(x, dy, sm, si, gamma, layout=layout, dtype=dtype)
        whole = bnorm.backward_reduce(x, dy, sm, layout=layout, dtype=dtype)
        xs, dys = split(x), split(dy)
        sums = [bnorm.backward_reduce(p, d, sm, layout=layout, dtype=dtype)
                for p, d in zip(xs, dys)]
        np.testing.assert_array_equal(sums[1][0], 0)  # the empty part
        np.testing.assert_array_equal(sums[1][1], 0)
        sum_dy = sum(s[0] for s in sums)  # what an all_reduce(SUM) gives
        sum_dy_xmu = sum(s[1] for s in sums)

        axes = channel_axes(x, layout)
        s = bshape(3, x.ndim, layout)
        xd, dyd = values(x, dtype), values(dy, dtype)
        xmu = xd - sm.astype(np.float64).reshape(s)
        abs_dy = np.abs(dyd).sum(axis=axes)
        abs_dy_xmu = np.abs(dyd * xmu).sum(axis=axes)
        for got, want, scale in [(sum_dy, whole[0], abs_dy), (sum_dy_xmu, whole[1], abs_dy_xmu)]:
            self.assertTrue(np.all(np.abs(got - want) <= 2 * SUM_TOL * scale), (got, want))

        m = x.size // 3
        res = [bnorm.backward_apply(p, d, gamma, sm, si, m, sum_dy, sum_dy_xmu, layout=layout,
                                    dtype=dtype) for p, d in zip(xs, dys)]
        self.assertEqual(res[1][0].shape, xs[1].shape)
        for r in res[1:]:  # dgamma, dbeta: the whole batch's, the same bits on every part
            self.assertBits(r[1], res[0][1])
            self.assertBits(r[2], res[0][2])
        sid = si.astype(np.float64)
        self.assertTrue(np.all(np.abs(res[0][2] - db) <= 2 * SUM_TOL * abs_dy + 2 * U * abs(db)))
        self.assertTrue(np.all(np.abs(res[0][1] - dg)
                               <= 2 * SUM_TOL * abs_dy_xmu * sid + 2 * U * abs(dg)))

        # dx against the whole batch's, with the scale of dx's terms (as the C tests).
        a = np.abs(gamma.astype(np.float64) * sid).reshape(s)
        mdy = whole[0].reshape(s) / m
        scale = (a * (np.abs(dyd - mdy) + abs_dy.reshape(s) / m)
                 + a * (sid ** 2).reshape(s) * np.abs(xmu)
                 * (np.abs(whole[1]) + abs_dy_xmu).reshape(s) / m)
        got = values(np.concatenate([r[0] for r in res]), dtype)
        want = values(dx, dtype)
        bad = np.abs(got - want) > 2 * DX_TOL * scale + ulp16(want, dtype)
        self.assertFalse(bad.any(), f"{bad.sum()} dx elements off")

    # ---- errors ----

    def test_errors_carry_the_status(self):
        x = self.data((2, 3, 4))
        count, mean, m2 = bnorm.stats(x)
        empty = np.empty((0, 3, 4), np.float32)
        rm = np.zeros(3, np.float32)

        def status(fn, *args, **kwargs):
            with self.assertRaises(bnorm.Error) as cm:
                fn(*args, **kwargs)
            return cm.exception.status

        # forward_apply: the total below this part's count; too few values.
        self.assertEqual(status(bnorm.forward_apply, x, None, None, count - 1, mean, m2,
                                running_mean=rm), BAD_ARGUMENT)
        np.testing.assert_array_equal(rm, 0)  # unchanged on error
        self.assertEqual(status(bnorm.forward_apply, empty, None, None, 1, mean, m2),
                         TOO_FEW_VALUES)
        one = self.data((1, 3, 1))
        self.assertEqual(status(bnorm.forward_apply, one, None, None, 1, *bnorm.stats(one)[1:]),
                         TOO_FEW_VALUES)
        self.assertEqual(status(bnorm.forward_apply, x, None, None, count, mean, -m2),
                         BAD_ARGUMENT)  # a negative m2
        self.assertEqual(status(bnorm.forward_apply, x, None, None, count, mean, m2, eps=-1.0),
                         BAD_ARGUMENT)
        # The empty part normalizes nothing but gets the per-channel outputs.
        y, sm, si = bnorm.forward_apply(empty, None, None, count, mean, m2, running_mean=rm)
        self.assertEqual(y.shape, empty.shape)
        np.testing.assert_array_equal(sm, mean.astype(np.float32))
        # momentum crosses the C API as a float: 0.1f, widened (0.9 * 0 + m * mean).
        momentum = np.float64(np.float32(0.1))
        np.testing.assert_array_equal(rm, (momentum * mean).astype(np.float32))

        # stats_merge: a negative count; c == 0.
        self.assertEqual(status(bnorm.stats_merge, [count, -1], np.stack([mean, mean]),
                                np.stack([m2, m2])), BAD_ARGUMENT)
        self.assertEqual(status(bnorm.stats_merge, [1], np.zeros((1, 0)), np.zeros((1, 0))),
                         BAD_SHAPE)
        self.assertEqual(status(bnorm.stats, np.ones((2, 0, 4), np.float32)), BAD_SHAPE)
        # A part with count 0 is skipped (NaN there is harmless); all empty: zeros.
        merged = bnorm.stats_merge([0, count], [[np.nan] * 3, mean], [[np.nan] * 3, m2])
        self.assertEqual(merged[0], count)
        self.assertBits(merged[1], mean)
        zero = bnorm.stats_merge([0, 0], np.ones((2, 3)), np.ones((2, 3)))
        self.assertEqual(zero[0], 0)
        np.testing.assert_array_equal(zero[1], 0)

        # backward_apply: the total below this part's count, or 0.
        dy = self.data(x.shape)
        sum_dy, sum_dy_xmu = bnorm.backward_reduce(x, dy, sm)
        self.assertEqual(status(bnorm.backward_apply, x, dy, None, sm, si, count - 1, sum_dy,
                                sum_dy_xmu), BAD_ARGUMENT)
        self.assertEqual(status(bnorm.backward_apply, empty, empty, None, sm, si, 0, sum_dy,
                                sum_dy_xmu), BAD_ARGUMENT)
        dx, dg, db = bnorm.backward_apply(empty, empty, None, sm, si, count, sum_dy, sum_dy_xmu)
        self.assertEqual(dx.shape, empty.shape)
        np.testing.assert_array_equal(db, sum_dy.astype(np.float32))

        # Mistakes caught in Python.
        with self.assertRaises(ValueError):  # means not [k, c]
            bnorm.stats_merge([count], mean, m2)
        with self.assertRaises(ValueError):  # k differs
            bnorm.stats_merge([count, count], mean[None], m2[None])
        with self.assertRaises(TypeError):  # counts are integers
            bnorm.stats_merge([2.5], mean[None], m2[None])
        with self.assertRaises(TypeError):
            bnorm.forward_apply(x, None, None, 8.0, mean, m2)
        with self.assertRaises(OverflowError):
            bnorm.forward_apply(x, None, None, 2 ** 63, mean, m2)
        with self.assertRaises(ValueError):  # mean of the wrong size
            bnorm.forward_apply(x, None, None, count, mean[:2], m2)
        with self.assertRaises(ValueError):  # dy unlike x
            bnorm.backward_reduce(x, dy[:1], sm)
        with self.assertRaises(TypeError):  # running stats are float32, updated in place
            bnorm.forward_apply(x, None, None, count, mean, m2, running_var=np.ones(3))
        with self.assertRaises(ValueError):
            bnorm.stats(x, layout="NC")

    def test_collective_statuses_have_their_messages(self):
        # BNORM_ERR_MISMATCH, PEER and COMM (bnorm_mpi.h) read as the library says.
        for code, word in [(9, "disagree"), (10, "another rank"), (11, "MPI")]:
            e = bnorm.Error(code, "bnorm_mpi_forward_training")
            self.assertEqual(e.status, code)
            self.assertIn(word, str(e))
            self.assertNotIn("unknown status", str(e))


if __name__ == "__main__":
    unittest.main()
