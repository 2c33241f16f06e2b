"""Tests of the Python binding against a numpy float64 reference.

Run: BNORM_LIBRARY=build/release/libbnorm.so.0 PYTHONPATH=python /usr/bin/python3 -m unittest discover -s python/tests
"""

import copy
import os
import pickle
import subprocess
import sys
import threading
import unittest

import numpy as np

import bnorm


def ref_stats(x, layout):
    """Per-channel mean and biased variance in float64."""
    axes = (0,) + tuple(range(2, x.ndim)) if layout == "NCHW" else tuple(range(x.ndim - 1))
    xd = x.astype(np.float64)
    return xd.mean(axis=axes), xd.var(axis=axes)


def bshape(c, ndim, layout):
    """Shape that broadcasts a per-channel vector against x."""
    if layout == "NCHW":
        return (1, c) + (1,) * (ndim - 2)
    return (1,) * (ndim - 1) + (c,)


def ref_forward(x, mean, var, gamma, beta, eps, layout):
    c = mean.size
    s = bshape(c, x.ndim, layout)
    return ((x.astype(np.float64) - mean.reshape(s)) / np.sqrt(var.reshape(s) + eps)
            * gamma.reshape(s) + beta.reshape(s))


def ref_backward(x, dy, mean, invstd, gamma, layout):
    c = mean.size
    s = bshape(c, x.ndim, layout)
    axes = (0,) + tuple(range(2, x.ndim)) if layout == "NCHW" else tuple(range(x.ndim - 1))
    m = x.size // c
    xmu = x.astype(np.float64) - mean.reshape(s)
    dyd = dy.astype(np.float64)
    sum_dy = dyd.sum(axis=axes)
    sum_dy_xmu = (dyd * xmu).sum(axis=axes)
    inv = invstd.astype(np.float64).reshape(s)
    dx = gamma.reshape(s) * inv * (dyd - sum_dy.reshape(s) / m
                                   - xmu * inv ** 2 * sum_dy_xmu.reshape(s) / m)
    return dx, sum_dy_xmu * invstd, sum_dy


def to_bf16(a):
    """float32 -> bf16 bit patterns (round to nearest even), as uint16."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), r)


def from_bf16(h):
    return (h.astype(np.uint32) << 16).view(np.float32)


class ForwardTest(unittest.TestCase):
    def setUp(self):
        self.rng = np.random.default_rng(0)

    def data(self, shape, offset=0.0):
        return (offset + self.rng.standard_normal(shape) * 2).astype(np.float32)

    def test_training_matches_reference_both_layouts(self):
        for layout, shape in [("NCHW", (4, 6, 5, 7)), ("NHWC", (4, 5, 7, 6)),
                              ("NCHW", (16, 6)), ("NHWC", (3, 2, 3, 4, 6))]:
            with self.subTest(layout=layout, shape=shape):
                x = self.data(shape, offset=1e4)  # large offset: shifted statistics
                c = 6
                gamma = self.rng.uniform(0.5, 2, c).astype(np.float32)
                beta = self.rng.uniform(-1, 1, c).astype(np.float32)
                rm = np.zeros(c, np.float32)
                rv = np.ones(c, np.float32)
                y, mean, invstd = bnorm.batch_norm_training(x, gamma, beta, rm, rv, momentum=0.1,
                                                            eps=1e-5, layout=layout)
                m_ref, v_ref = ref_stats(x, layout)
                np.testing.assert_allclose(mean, m_ref, rtol=1e-7, atol=1e-6 * float(np.sqrt(v_ref).max()))
                np.testing.assert_allclose(invstd, 1 / np.sqrt(v_ref + 1e-5), rtol=1e-5)
                y_ref = ref_forward(x, m_ref, v_ref, gamma, beta, 1e-5, layout)
                self.assertEqual(y.shape, x.shape)
                self.assertEqual(y.dtype, np.float32)
                np.testing.assert_allclose(y, y_ref, atol=1e-5 * (1 + np.abs(y_ref).max()))
                count = x.size // c
                np.testing.assert_allclose(rm, 0.1 * m_ref, rtol=1e-6)
                np.testing.assert_allclose(rv, 0.9 + 0.1 * v_ref * count / (count - 1), rtol=1e-5)

    def test_batch_norm_like_torch(self):
        x = self.data((8, 3, 4, 4))
        rm = np.zeros(3, np.float32)
        rv = np.ones(3, np.float32)
        y = bnorm.batch_norm(x, rm, rv, training=True)
        m_ref, v_ref = ref_stats(x, "NCHW")
        np.testing.assert_allclose(y, ref_forward(x, m_ref, v_ref, np.ones(3), np.zeros(3), 1e-5,
                                                  "NCHW"), atol=1e-5)
        self.assertFalse(np.all(rm == 0))  # updated in place
        y_eval = bnorm.batch_norm(x, rm, rv, training=False)
        np.testing.assert_allclose(y_eval, ref_forward(x, rm.astype(np.float64),
                                                       rv.astype(np.float64), np.ones(3),
                                                       np.zeros(3), 1e-5, "NCHW"), atol=1e-5)

    def test_float16(self):
        x = self.data((4, 5, 33)).astype(np.float16)
        gamma = self.rng.uniform(0.5, 2, 5).astype(np.float32)
        y, mean, invstd = bnorm.batch_norm_training(x, gamma)
        self.assertEqual(y.dtype, np.float16)
        m_ref, v_ref = ref_stats(x.astype(np.float32), "NCHW")
        y_ref = ref_forward(x, m_ref, v_ref, gamma, np.zeros(5), 1e-5, "NCHW")
        # One rounding to f16: half an ulp, 2^-11 relative (normal range).
        np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=2.0 ** -11, atol=1e-5)
        # Exactly the f32 path on the widened input, rounded once.
        y32, mean32, _ = bnorm.batch_norm_training(x.astype(np.float32), gamma)
        np.testing.assert_array_equal(y, y32.astype(np.float16))
        np.testing.assert_array_equal(mean, mean32)

    def test_bfloat16(self):
        x32 = self.data((6, 4, 20))
        xb = to_bf16(x32)
        y, mean, _ = bnorm.batch_norm_training(xb, layout="NCHW", dtype="bfloat16")
        self.assertEqual(y.dtype, np.uint16)
        y32, mean32, _ = bnorm.batch_norm_training(from_bf16(xb))
        np.testing.assert_array_equal(y, to_bf16(y32))
        np.testing.assert_array_equal(mean, mean32)
        with self.assertRaises(TypeError):
            bnorm.batch_norm_training(x32, dtype="bfloat16")  # needs uint16 bits

    def test_inference(self):
        x = self.data((5, 7, 11))
        mean = self.rng.uniform(-1, 1, 7).astype(np.float32)
        var = self.rng.uniform(0.5, 2, 7).astype(np.float32)
        y = bnorm.batch_norm_inference(x, mean, var, eps=1e-3, layout="NCHW")
        np.testing.assert_allclose(y, ref_forward(x, mean.astype(np.float64),
                                                  var.astype(np.float64), np.ones(7),
                                                  np.zeros(7), 1e-3, "NCHW"), atol=1e-5)


class BackwardTest(unittest.TestCase):
    def test_backward_matches_reference(self):
        rng = np.random.default_rng(1)
        for layout, shape in [("NCHW", (4, 3, 6, 5)), ("NHWC", (4, 6, 5, 3))]:
            with self.subTest(layout=layout):
                x = rng.standard_normal(shape).astype(np.float32)
                dy = rng.standard_normal(shape).astype(np.float32)
                gamma = rng.uniform(0.5, 2, 3).astype(np.float32)
                _, mean, invstd = bnorm.batch_norm_training(x, gamma, layout=layout)
                dx, dgamma, dbeta = bnorm.batch_norm_backward(x, dy, mean, invstd, gamma,
                                                              layout=layout)
                dx_ref, dg_ref, db_ref = ref_backward(x, dy, mean, invstd, gamma, layout)
                np.testing.assert_allclose(dx, dx_ref, atol=1e-5)
                np.testing.assert_allclose(dgamma, dg_ref, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(dbeta, db_ref, rtol=1e-5, atol=1e-5)
                # Frozen statistics: dx = dy * gamma * invstd.
                dxf, _, _ = bnorm.batch_norm_backward(x, dy, mean, invstd, gamma, layout=layout,
                                                      frozen=True)
                s = (1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3)
                np.testing.assert_allclose(dxf, dy * (gamma * invstd).reshape(s), rtol=1e-6)
                none_dx, dg2, _ = bnorm.batch_norm_backward(x, dy, mean, invstd, gamma,
                                                            layout=layout, need_dx=False)
                self.assertIsNone(none_dx)
                np.testing.assert_array_equal(dg2, dgamma)


class FusedTest(unittest.TestCase):
    def test_residual_relu_forward_and_backward(self):
        rng = np.random.default_rng(5)
        for layout, shape in [("NCHW", (4, 3, 6, 5)), ("NHWC", (4, 6, 5, 3))]:
            with self.subTest(layout=layout):
                x = rng.standard_normal(shape).astype(np.float32)
                z = rng.standard_normal(shape).astype(np.float32)
                dy = rng.standard_normal(shape).astype(np.float32)
                gamma = rng.uniform(0.5, 2, 3).astype(np.float32)
                beta = rng.uniform(-1, 1, 3).astype(np.float32)
                y, mean, invstd = bnorm.batch_norm_training(x, gamma, beta, layout=layout, z=z,
                                                            activation="relu")
                m_ref, v_ref = ref_stats(x, layout)
                y_ref = np.maximum(ref_forward(x, m_ref, v_ref, gamma, beta, 1e-5, layout) + z, 0)
                np.testing.assert_allclose(y, y_ref, atol=1e-5)
                dx, dgamma, dbeta, dz = bnorm.batch_norm_backward(
                    x, dy, mean, invstd, gamma, layout=layout, y=y, activation="relu",
                    need_dz=True)
                g = np.where(y > 0, dy, 0).astype(np.float32)
                dx_ref, dg_ref, db_ref = ref_backward(x, g, mean, invstd, gamma, layout)
                np.testing.assert_array_equal(dz, g)
                np.testing.assert_allclose(dx, dx_ref, atol=1e-5)
                np.testing.assert_allclose(dgamma, dg_ref, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(dbeta, db_ref, rtol=1e-5, atol=1e-5)
                y_inf = bnorm.batch_norm(x, m_ref.astype(np.float32), v_ref.astype(np.float32),
                                         gamma, beta, layout=layout, z=z, activation="relu")
                np.testing.assert_allclose(y_inf, y_ref, atol=1e-5)
        with self.assertRaises(ValueError):
            bnorm.batch_norm_training(x, activation="gelu")

    def test_outputs_start_on_64_byte_boundaries(self):
        # As framework tensors do: the fused backward streams dz with dx
        # beyond the last-level cache only where both share their alignment.
        rng = np.random.default_rng(6)
        for shape, dtype in [((3, 5, 7), np.float32), ((2, 4, 3, 3), np.float16)]:
            with self.subTest(shape=shape, dtype=dtype):
                x = rng.standard_normal(shape).astype(dtype)
                y, mean, invstd = bnorm.batch_norm_training(x, activation="relu")
                dx, _, _, dz = bnorm.batch_norm_backward(x, np.ones_like(x), mean, invstd, y=y,
                                                         activation="relu", need_dz=True)
                for out in (y, dx, dz):
                    self.assertEqual(out.ctypes.data % 64, 0)
                    self.assertTrue(out.flags.c_contiguous and out.flags.writeable)
                    self.assertEqual((out.shape, out.dtype), (shape, np.dtype(dtype)))


class ApiTest(unittest.TestCase):
    def test_errors_carry_the_status(self):
        x = np.ones((2, 3, 4), np.float32)
        with self.assertRaises(bnorm.Error) as cm:
            bnorm.batch_norm_training(x, eps=-1.0)
        self.assertEqual(cm.exception.status, 3)  # BNORM_ERR_BAD_ARGUMENT
        with self.assertRaises(bnorm.Error) as cm:
            bnorm.batch_norm_training(np.ones((1, 3, 1), np.float32))  # one value per channel
        self.assertEqual(cm.exception.status, 5)  # BNORM_ERR_TOO_FEW_VALUES
        rm = np.zeros(3, np.float32)
        with self.assertRaises(bnorm.Error):
            bnorm.batch_norm_training(x, running_mean=rm, momentum=2.0)
        np.testing.assert_array_equal(rm, np.zeros(3))  # unchanged on error
        # Out of range as given, though float32 rounding would bring them into it.
        for kw in ({"momentum": 1.00000001}, {"momentum": -1e-50}, {"eps": -1e-50},
                   {"eps": 1e300}, {"momentum": float("nan")}):
            with self.assertRaises(bnorm.Error, msg=str(kw)) as cm:
                bnorm.batch_norm_training(x, running_mean=rm, **kw)
            self.assertEqual(cm.exception.status, 3, kw)  # BNORM_ERR_BAD_ARGUMENT
        np.testing.assert_array_equal(rm, np.zeros(3))
        for kw in ({"momentum": 1.0}, {"momentum": 0.0}, {"eps": 0.0}, {"eps": 1e-50}):
            bnorm.batch_norm_training(x, **kw)  # the ends of the ranges are accepted
        with self.assertRaises(bnorm.Error) as cm:
            bnorm.batch_norm_inference(x, np.zeros(3, np.float32), np.ones(3, np.float32),
                                       eps=-1e-50)
        self.assertEqual(cm.exception.status, 3)
        with self.assertRaises(TypeError):  # running stats are updated in place: float32 only
            bnorm.batch_norm_training(x, running_mean=np.zeros(3, np.float64))
        with self.assertRaises(ValueError):
            bnorm.batch_norm_training(x, np.ones(4, np.float32))  # gamma of the wrong size
        with self.assertRaises(TypeError):
            bnorm.batch_norm_training(x.astype(np.float64))

    def test_context(self):
        x = np.random.default_rng(2).standard_normal((8, 4, 100)).astype(np.float32)
        with bnorm.Context(2) as ctx:
            self.assertEqual(ctx.threads, 2)
            y1, _, _ = bnorm.batch_norm_training(x, ctx=ctx)
        y2, _, _ = bnorm.batch_norm_training(x)
        np.testing.assert_array_equal(y1, y2)  # thread count never changes a bit
        with self.assertRaises(ValueError):
            bnorm.batch_norm_training(x, ctx=ctx)  # closed
        self.assertRegex(bnorm.version(), r"^\d+\.\d+\.\d+$")
        self.assertTrue(bnorm.active_target())

    def test_error_pickles(self):
        # Process pools pickle an exception to re-raise it in the parent.
        with self.assertRaises(bnorm.Error) as cm:
            bnorm.batch_norm_training(np.ones((2, 3, 4), np.float32), eps=-1.0)
        for e in (pickle.loads(pickle.dumps(cm.exception)), copy.copy(cm.exception)):
            self.assertIsInstance(e, bnorm.Error)
            self.assertEqual((e.status, e.where, str(e)),
                             (cm.exception.status, cm.exception.where, str(cm.exception)))

    def test_context_arguments_and_lifetime(self):
        # Counts beyond a C int are clamped as the C library clamps large
        # ones, never wrapped around (2**32 + 1 once ran on one thread).
        with bnorm.Context(2**31 - 1) as big, bnorm.Context(2**32 + 1) as huge:
            self.assertEqual(huge.threads, big.threads)
            self.assertGreater(huge.threads, 1)
        for bad in (-1, -2**40):
            with self.assertRaises(bnorm.Error) as cm:
                bnorm.Context(bad)
            self.assertEqual(cm.exception.status, 3)  # BNORM_ERR_BAD_ARGUMENT
        with self.assertRaises(TypeError):
            bnorm.Context(1.5)
        ctx = bnorm.Context(1)
        ctx.close()
        ctx.close()  # idempotent
        with self.assertRaises(ValueError):
            ctx.threads  # pylint: disable=pointless-statement

    def test_close_waits_for_calls_in_flight(self):
        # A call in flight holds the context (bnorm._held, as every function
        # does around its C call): close() from another thread waits for it,
        # calls started meanwhile are refused, and close() from the thread
        # in the call raises instead of waiting for itself.
        x = np.random.default_rng(5).standard_normal((4, 8, 64)).astype(np.float32)
        expected, _, _ = bnorm.batch_norm_training(x)
        ctx = bnorm.Context(2)
        with bnorm._held(ctx) as handle:  # pylint: disable=protected-access
            closer = threading.Thread(target=ctx.close)
            closer.start()
            closer.join(0.2)
            self.assertTrue(closer.is_alive())  # waiting for the call
            with self.assertRaises(ValueError):  # closing: no new calls
                bnorm.batch_norm_training(x, ctx=ctx)
            with self.assertRaises(RuntimeError):
                ctx.close()
            self.assertIsNotNone(handle)
            self.assertEqual(ctx._handle, handle)  # pylint: disable=protected-access
        closer.join(5)
        self.assertFalse(closer.is_alive())
        self.assertIsNone(ctx._handle)  # pylint: disable=protected-access
        # Threads calling while another closes: every call that ran is right.
        ctx = bnorm.Context(2)
        results = []

        def work():
            try:
                for _ in range(20):
                    results.append(bnorm.batch_norm_training(x, ctx=ctx)[0])
            except ValueError:  # closed
                pass

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        ctx.close()
        for t in threads:
            t.join()
        for y in results:
            np.testing.assert_array_equal(y, expected)

    def test_dtype_argument_is_checked(self):
        x32 = np.ones((2, 3, 4), np.float32)
        with self.assertRaises(TypeError):
            bnorm.batch_norm_training(x32, dtype="float16")
        with self.assertRaises(TypeError):
            bnorm.batch_norm_training(x32.astype(np.float16), dtype="float32")
        y, _, _ = bnorm.batch_norm_training(x32.astype(np.float16), dtype="f16")
        self.assertEqual(y.dtype, np.float16)

    def test_dtype_argument_takes_numpy_types(self):
        x32 = np.ones((2, 3, 4), np.float32)
        x16 = x32.astype(np.float16)
        for dtype in (np.float32, np.dtype(np.float32), "float32", "F32"):
            self.assertEqual(bnorm.batch_norm_training(x32, dtype=dtype)[0].dtype, np.float32)
        for dtype in (np.float16, np.dtype("float16"), "f16"):
            self.assertEqual(bnorm.batch_norm_training(x16, dtype=dtype)[0].dtype, np.float16)
        with self.assertRaises(TypeError):
            bnorm.batch_norm_training(x32, dtype=np.float16)
        for bad in (np.float64, "int8", "nonsense", 3.5):
            with self.assertRaises(ValueError):
                bnorm.batch_norm_training(x32, dtype=bad)

    def test_context_cannot_be_copied(self):
        # A copy would share the C handle and destroy it twice.
        with bnorm.Context(1) as ctx:
            for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
                with self.assertRaises(TypeError):
                    attempt(ctx)
            self.assertEqual(ctx.threads, 1)

    def test_refused_close_leaves_the_context_open(self):
        x = np.ones((2, 3, 4), np.float32)
        ctx = bnorm.Context(1)
        with bnorm._held(ctx):  # pylint: disable=protected-access
            with self.assertRaises(RuntimeError):
                ctx.close()
        bnorm.batch_norm_training(x, ctx=ctx)  # still usable
        ctx.close()
        with self.assertRaises(ValueError):
            bnorm.batch_norm_training(x, ctx=ctx)

    def test_misaligned_arrays(self):
        # Inputs one byte off their element alignment are copied (the C API
        # requires aligned elements); running statistics updated in place
        # cannot be, and are refused.
        rng = np.random.default_rng(8)
        x = rng.standard_normal((4, 3, 10)).astype(np.float32)
        raw = np.zeros(x.nbytes + 1, np.uint8)
        off = raw[1:].view(np.float32).reshape(x.shape)
        off[...] = x
        self.assertFalse(off.flags.aligned)
        # What reaches C is an aligned copy (x86 would not fault either way).
        self.assertTrue(bnorm._tensor(off, None, "x")[0].flags.aligned)  # pylint: disable=protected-access
        np.testing.assert_array_equal(bnorm.batch_norm_training(off)[0],
                                      bnorm.batch_norm_training(x)[0])
        rm_raw = np.zeros(3 * 4 + 1, np.uint8)
        rm = rm_raw[1:].view(np.float32)
        self.assertFalse(rm.flags.aligned)
        with self.assertRaises(TypeError):
            bnorm.batch_norm_training(x, running_mean=rm)

    def test_scalar_arguments_are_checked(self):
        x = np.ones((2, 3, 4), np.float32)
        for kwargs in ({"eps": None}, {"momentum": None}, {"eps": "1e-5"}, {"momentum": []}):
            with self.assertRaises(TypeError):
                bnorm.batch_norm_training(x, **kwargs)
        y1 = bnorm.batch_norm_training(x, eps=np.float32(1e-5), momentum=np.array(0.1))[0]
        np.testing.assert_array_equal(y1, bnorm.batch_norm_training(x)[0])
        with self.assertRaises(TypeError):
            bnorm.fold(np.zeros(3), np.ones(3), eps=None)

    def test_unloadable_bnorm_library_is_an_error(self):
        # BNORM_LIBRARY names the library to use: one that cannot be loaded
        # is an ImportError, never a silent fall back to another copy.
        env = dict(os.environ, BNORM_LIBRARY="/nonexistent/libbnorm.so.0")
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(bnorm.__file__)))
        run = subprocess.run([sys.executable, "-c", "import bnorm"], env=env,
                             capture_output=True, text=True, check=False)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("ImportError", run.stderr)
        self.assertIn("/nonexistent/libbnorm.so.0", run.stderr)

    def test_frozen_backward_takes_activation_none(self):
        rng = np.random.default_rng(6)
        x = rng.standard_normal((4, 3, 5)).astype(np.float32)
        dy = rng.standard_normal((4, 3, 5)).astype(np.float32)
        mean, invstd = np.zeros(3, np.float32), np.ones(3, np.float32)
        a = bnorm.batch_norm_backward(x, dy, mean, invstd, frozen=True)
        b = bnorm.batch_norm_backward(x, dy, mean, invstd, frozen=True, activation="none")
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
        with self.assertRaises(ValueError):
            bnorm.batch_norm_backward(x, dy, mean, invstd, frozen=True, activation="relu",
                                      y=x)

    def test_fold(self):
        rng = np.random.default_rng(3)
        o, i = 4, 6
        w = rng.standard_normal((o, i)).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        gamma = rng.uniform(0.5, 2, o).astype(np.float32)
        beta = rng.standard_normal(o).astype(np.float32)
        mean = rng.standard_normal(o).astype(np.float32)
        var = rng.uniform(0.5, 2, o).astype(np.float32)
        x = rng.standard_normal((10, i)).astype(np.float32)
        layer = x.astype(np.float64) @ w.T.astype(np.float64) + b
        ref = (layer - mean) / np.sqrt(var.astype(np.float64) + 1e-5) * gamma + beta
        for layout, wl in [("OI", w), ("IO", np.ascontiguousarray(w.T))]:
            w2, b2 = bnorm.fold_into_weights(wl, b, mean, var, gamma, beta, 1e-5, layout=layout)
            w2_oi = w2 if layout == "OI" else w2.T
            folded = x.astype(np.float64) @ w2_oi.T.astype(np.float64) + b2
            np.testing.assert_allclose(folded, ref, rtol=1e-5, atol=1e-5)
        scale, shift = bnorm.fold(mean, var, gamma, beta, 1e-5)
        np.testing.assert_allclose(layer * scale + shift, ref, rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    unittest.main()
