"""bnorm: batch normalization on the CPU, from Python.

A thin ctypes layer over libbnorm's C API (no compiled extension) working on
numpy arrays. PyTorch semantics:

    import numpy as np, bnorm
    x = np.random.randn(8, 16, 32, 32).astype(np.float32)
    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
    y = bnorm.batch_norm(x, rm, rv, training=True)            # updates rm, rv
    y, mean, invstd = bnorm.batch_norm_training(x)            # saved statistics too
    dx, dgamma, dbeta = bnorm.batch_norm_backward(x, dy, mean, invstd)

Tensors are float32, float16, or bfloat16 stored in uint16 arrays
(``dtype="bfloat16"``); per-channel arrays are float32 (float64 for the
statistics and gradient sums of the split functions below). Layout "NCHW"
means x.shape == (N, C, *spatial), "NHWC" means (N, *spatial, C); a 2-D
(N, C) array is the same in both. Errors raise bnorm.Error, whose ``status`` is the
C status code; invalid calls change nothing.

Synchronized batch norm (a batch split over processes or devices) uses the
split functions, with any transport in between:

    count, mean, m2 = bnorm.stats(x_part)                   # this part's statistics
    # gather (count, mean, m2) of every part, then
    count, mean, m2 = bnorm.stats_merge(counts, means, m2s)  # the whole batch's
    y, save_mean, save_invstd = bnorm.forward_apply(x_part, w, b, count, mean, m2)
    sum_dy, sum_dy_xmu = bnorm.backward_reduce(x_part, dy_part, save_mean)
    # all_reduce(SUM) both sums over the parts, then
    dx, dgamma, dbeta = bnorm.backward_apply(x_part, dy_part, w, save_mean, save_invstd,
                                             count, sum_dy, sum_dy_xmu)

A part may be empty (x.shape[0] == 0).

The library is found through $BNORM_LIBRARY, next to this package, where
`cmake --install` put it (for a package it installed), or on the system's
library path (libbnorm.so.0).
"""

import collections
import contextlib
import ctypes
import ctypes.util
import math
import operator
import os
import threading

import numpy as np

__all__ = [
    "Error", "Context", "batch_norm", "batch_norm_training", "batch_norm_inference",
    "batch_norm_backward", "fold", "fold_into_weights", "stats", "stats_merge", "forward_apply",
    "backward_reduce", "backward_apply", "version", "active_target",
]

# ---- the library ----

def _load_library():
    explicit = os.environ.get("BNORM_LIBRARY", "").strip()
    if explicit:  # asked for: that library or an error, never another one
        try:
            return ctypes.CDLL(explicit)
        except OSError as e:
            raise ImportError(f"bnorm: cannot load BNORM_LIBRARY={explicit}: {e}") from e
    candidates = []
    here = os.path.dirname(os.path.realpath(__file__))  # where it was installed
    candidates += [os.path.join(here, "libbnorm.so.0"), os.path.join(here, "libbnorm.so")]
    try:  # written by `cmake --install`: where the installed library is
        from . import _install_paths
        candidates.append(os.path.normpath(
            os.path.join(here, _install_paths.LIBRARY_DIR, "libbnorm.so.0")))
    except ImportError:
        pass
    found = ctypes.util.find_library("bnorm")
    if found:
        candidates.append(found)
    candidates.append("libbnorm.so.0")
    errors = []
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError as e:  # try the next one
            errors.append(f"{path}: {e}")
    raise ImportError("bnorm: cannot load libbnorm (set BNORM_LIBRARY): " + "; ".join(errors))


_lib = _load_library()

_i64 = ctypes.c_int64
_f32 = ctypes.c_float
_ptr = ctypes.c_void_p
_fptr = ctypes.POINTER(ctypes.c_float)
_dptr = ctypes.POINTER(ctypes.c_double)
_i64ptr = ctypes.POINTER(_i64)


class _Desc(ctypes.Structure):
    _fields_ = [("n", _i64), ("c", _i64), ("spatial", _i64), ("layout", ctypes.c_int),
                ("dtype", ctypes.c_int)]


def _declare(name, args, restype=ctypes.c_int):
    fn = getattr(_lib, name)
    fn.argtypes = args
    fn.restype = restype
    return fn


_status_string = _declare("bnorm_status_string", [ctypes.c_int], ctypes.c_char_p)
_version_string = _declare("bnorm_version_string", [], ctypes.c_char_p)
_active_target = _declare("bnorm_active_target", [], ctypes.c_char_p)
_context_create = _declare("bnorm_context_create", [ctypes.c_int, ctypes.POINTER(_ptr)])
_context_destroy = _declare("bnorm_context_destroy", [_ptr], None)
_context_threads = _declare("bnorm_context_num_threads", [_ptr])
_forward_training = _declare(
    "bnorm_forward_training",
    [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _fptr, _fptr, _f32, _f32, _fptr, _fptr, _fptr,
     _fptr])
_forward_inference = _declare(
    "bnorm_forward_inference",
    [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _fptr, _fptr, _fptr, _fptr, _f32])
_backward_frozen = _declare(
    "bnorm_backward_frozen",
    [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _ptr, _fptr, _fptr, _fptr, _fptr, _fptr])
_forward_training_ex = _declare(
    "bnorm_forward_training_ex",
    [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _ptr, ctypes.c_int, _fptr, _fptr, _f32, _f32, _fptr,
     _fptr, _fptr, _fptr])
_forward_inference_ex = _declare(
    "bnorm_forward_inference_ex",
    [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _ptr, ctypes.c_int, _fptr, _fptr, _fptr, _fptr,
     _f32])
_backward_ex = _declare(
    "bnorm_backward_ex",
    [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _ptr, _ptr, _ptr, ctypes.c_int, _fptr, _fptr,
     _fptr, _fptr, _fptr, _fptr])
_fold = _declare("bnorm_fold", [_i64, _fptr, _fptr, _fptr, _fptr, _f32, _fptr, _fptr])
_fold_into_weights = _declare(
    "bnorm_fold_into_weights",
    [ctypes.c_int, _i64, _i64, _fptr, _fptr, _fptr, _fptr, _fptr, _fptr, _fptr, _fptr, _f32])
_stats = _declare("bnorm_stats", [_ptr, ctypes.POINTER(_Desc), _ptr, _dptr, _dptr])
_stats_merge = _declare("bnorm_stats_merge",
                        [_i64, _i64, _i64ptr, _dptr, _dptr, _i64ptr, _dptr, _dptr])
_forward_apply = _declare(
    "bnorm_forward_apply",
    [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _fptr, _fptr, _i64, _dptr, _dptr, _f32, _f32, _fptr,
     _fptr, _fptr, _fptr])
_backward_reduce = _declare(
    "bnorm_backward_reduce", [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _fptr, _dptr, _dptr])
_backward_apply = _declare(
    "bnorm_backward_apply",
    [_ptr, ctypes.POINTER(_Desc), _ptr, _ptr, _ptr, _fptr, _fptr, _fptr, _i64, _dptr, _dptr,
     _fptr, _fptr])

_LAYOUTS = {"NCHW": 0, "NHWC": 1}
_ACTIVATIONS = {None: 0, "none": 0, "relu": 1}
_F32, _BF16, _F16 = 0, 1, 2
_WEIGHT_LAYOUTS = {"OIHW": 0, "OHWI": 1, "OI": 2, "HWIO": 3, "IO": 4}


class Error(RuntimeError):
    """A bnorm call failed; ``status`` is the C bnorm_status value, ``where``
    the C function that returned it."""

    def __init__(self, status, where):
        self.status = int(status)
        self.where = where
        message = _status_string(status).decode()
        super().__init__(f"{where}: {message} (status {self.status})")

    def __reduce__(self):  # pickle and copy (process pools re-raise it in the parent)
        return (type(self), (self.status, self.where))


def _check(status, where):
    if status != 0:
        raise Error(status, where)


def version():
    """The library version, e.g. '0.1.0'."""
    return _version_string().decode()


def active_target():
    """The SIMD target the kernels run on (AVX2, SSE4, ...)."""
    return _active_target().decode()


class Context:
    """A thread pool and scratch memory, reused between calls.

    ``Context(threads=0)`` uses all cores. Use as a context manager, or call
    close(); passing ``ctx=None`` to a function uses the process default.
    """

    def __init__(self, threads=0):
        self._handle = None
        threads = operator.index(threads)
        # A C int: larger counts are clamped as the C library clamps them,
        # negative ones left for it to reject.
        threads = max(min(threads, 2**31 - 1), -1)
        handle = _ptr()
        _check(_context_create(threads, ctypes.byref(handle)), "bnorm_context_create")
        # Calls in flight on this context, per thread: close() waits for
        # them, since the C context must outlive every call using it.
        self._calls = collections.Counter()
        self._closing = False
        self._idle = threading.Condition()
        self._handle = handle

    @property
    def threads(self):
        with _held(self) as handle:
            return _context_threads(handle)

    def close(self):
        """Destroys the context once the calls running on it in other
        threads have returned; calls started after close() raise ValueError.
        Raises RuntimeError when called by a thread in a call on it (a
        signal handler), where waiting would never end; the context stays
        open then."""
        idle = getattr(self, "_idle", None)
        if idle is None:  # __init__ failed
            return
        with idle:
            if self._calls[threading.get_ident()]:
                raise RuntimeError("bnorm.Context.close() inside a call on it")
            self._closing = True
            while self._calls:
                idle.wait()
            if self._handle is not None:
                _context_destroy(self._handle)
                self._handle = None

    # One C context, one owner: a copy would destroy it twice.
    def __copy__(self):
        raise TypeError("bnorm.Context cannot be copied; share the object itself")

    def __deepcopy__(self, memo):
        raise TypeError("bnorm.Context cannot be copied; share the object itself")

    def __reduce_ex__(self, protocol):
        raise TypeError("bnorm.Context cannot be pickled")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # No call holds the context here (each holds a reference to it), and
        # this must not wait: at interpreter exit a count left by an
        # interrupted call would hang it. Such a context is leaked instead.
        try:
            if self._handle is not None and not self._calls:
                _context_destroy(self._handle)
                self._handle = None
        except Exception:  # interpreter shutdown, or __init__ failed
            pass


@contextlib.contextmanager
def _held(ctx):
    """The C handle of ctx (None: the default context), held open for the
    duration of the with-block."""
    if ctx is None:
        yield None
        return
    if not isinstance(ctx, Context):
        raise TypeError("ctx must be a bnorm.Context or None")
    me = threading.get_ident()
    entered = False
    try:
        with ctx._idle:
            if ctx._handle is None or ctx._closing:
                raise ValueError("bnorm.Context is closed")
            ctx._calls[me] += 1
            entered = True
        yield ctx._handle
    finally:
        if entered:
            with ctx._idle:
                ctx._calls[me] -= 1
                if not ctx._calls[me]:
                    del ctx._calls[me]
                if not ctx._calls:
                    ctx._idle.notify_all()


# ---- argument helpers ----

_DTYPE_NAMES = {"float32": np.dtype(np.float32), "f32": np.dtype(np.float32),
                "float16": np.dtype(np.float16), "f16": np.dtype(np.float16)}


def _storage(dtype):
    """The storage a dtype argument asks for: None (from the data), "bfloat16",
    or np.float32 / np.float16 (given as a name, np.dtype or numpy type)."""
    if dtype is None:
        return None
    if isinstance(dtype, str):
        key = dtype.lower()
        if key in ("bfloat16", "bf16"):
            return "bfloat16"
        if key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
    try:
        wanted = np.dtype(dtype)
    except TypeError:
        wanted = None
    if wanted is None or wanted not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"unknown dtype {dtype!r}: float32, float16 or 'bfloat16'")
    return wanted


def _contiguous(a, dtype=None):
    """a as a C-contiguous, aligned numpy array (copied only if it is not)."""
    return np.require(a, dtype=dtype, requirements=["C", "A"])


def _tensor(x, dtype, name):
    """(contiguous array, bnorm dtype code) for a tensor argument."""
    x = np.asarray(x)
    wanted = _storage(dtype)
    if wanted == "bfloat16":
        if x.dtype != np.uint16:
            raise TypeError(f"{name}: bfloat16 data must be a uint16 array of bf16 patterns")
        code = _BF16
    elif x.dtype == np.float32 and (wanted is None or wanted == np.float32):
        code = _F32
    elif x.dtype == np.float16 and (wanted is None or wanted == np.float16):
        code = _F16
    else:
        expected = "float32 or float16" if wanted is None else str(wanted)
        raise TypeError(f"{name}: expected {expected} data (got {x.dtype}); "
                        "pass dtype='bfloat16' for bf16 bits in uint16")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected at least 2 dimensions, got shape {x.shape}")
    return _contiguous(x), code


# The ranges the C API accepts (bnorm.h), checked before float32 rounding.
_IN_RANGE = {
    "eps": lambda v: v >= 0.0 and math.isfinite(v),
    "momentum": lambda v: 0.0 <= v <= 1.0,
}


def _real(value, name):
    """A float argument (eps, momentum) as a Python float; TypeError if it is
    not a real number.

    The library takes them as float32 and checks them there (eps >= 0 and
    finite, momentum in [0, 1]). A double outside its range that float32
    rounding would bring into it (momentum=1.00000001, eps=-1e-50) is passed
    as NaN, so that the library refuses it as the value given deserves, with
    BNORM_ERR_BAD_ARGUMENT in its usual order of checks."""
    if not isinstance(value, (str, bytes)):
        try:
            v = float(value)
        except (TypeError, ValueError):
            pass
        else:
            return v if _IN_RANGE[name](v) else math.nan
    raise TypeError(f"{name} must be a real number, got {value!r}")


def _desc(x, layout, code):
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    n = x.shape[0]
    if layout == "NCHW" or x.ndim == 2:
        c = x.shape[1]
        spatial = int(np.prod(x.shape[2:], dtype=np.int64)) if x.ndim > 2 else 1
    else:
        c = x.shape[-1]
        spatial = int(np.prod(x.shape[1:-1], dtype=np.int64))
    return _Desc(n, c, spatial, _LAYOUTS[layout], code), int(c)


_POINTERS = {np.dtype(np.float32): _fptr, np.dtype(np.float64): _dptr}


def _channels(a, c, name, writable=False, dtype=np.float32):
    """A per-channel array (or None) of c values (float32, or float64 for the
    split statistics), as a ctypes pointer."""
    if a is None:
        return None, None
    dtype = np.dtype(dtype)
    if writable:
        if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous
                and a.flags.aligned and a.flags.writeable):
            raise TypeError(f"{name}: must be a writable contiguous aligned {dtype} numpy "
                            "array (it is updated in place)")
    else:
        a = _contiguous(a, dtype)
    if a.size != c:
        raise ValueError(f"{name}: expected {c} values, got {a.size}")
    return a, a.ctypes.data_as(_POINTERS[dtype])


def _new_channels(c, dtype=np.float32):
    a = np.empty(c, dtype)
    return a, a.ctypes.data_as(_POINTERS[np.dtype(dtype)])


def _training_channels(weight, bias, running_mean, running_var, c):
    """The per-channel arguments of a training forward pass: weight and bias,
    the running statistics (updated in place), and new save_mean/save_invstd
    arrays, each with its C pointer."""
    _, w = _channels(weight, c, "weight")
    _, b = _channels(bias, c, "bias")
    _, rm = _channels(running_mean, c, "running_mean", writable=True)
    _, rv = _channels(running_var, c, "running_var", writable=True)
    save_mean, sm = _new_channels(c)
    save_invstd, si = _new_channels(c)
    return w, b, rm, rv, save_mean, sm, save_invstd, si


def _empty_like(x):
    """An uninitialized C-contiguous array like x starting on a 64-byte boundary,
    as framework allocators place tensors: where bnorm writes dx of the fused
    backward around the caches (large tensors), it can do so for dz too only
    if both share their alignment."""
    nbytes = x.nbytes
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(x.dtype).reshape(x.shape)


def _data(a):
    """The data pointer of a tensor; NULL for None or an empty tensor (n == 0)."""
    if a is None or a.size == 0:
        return None
    return ctypes.c_void_p(a.ctypes.data)


# ---- forward ----

def _activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'none' or 'relu', got {activation!r}")
    return _ACTIVATIONS[activation]


def _residual(z, x, code, dtype, name="z"):
    """z (a residual, y or dy) as a contiguous array like x, or None."""
    if z is None:
        return None
    z, zcode = _tensor(z, dtype, name)
    if z.shape != x.shape or zcode != code:
        raise ValueError(f"{name} must match x in shape and dtype ({z.shape} vs {x.shape})")
    return z


def _forward_args(x, dtype, layout, z, activation):
    """The tensor, its descriptor, c, the residual and the activation code."""
    x, code = _tensor(x, dtype, "x")
    desc, c = _desc(x, layout, code)
    return x, desc, c, _residual(z, x, code, dtype), _activation(activation)


def batch_norm_training(x, weight=None, bias=None, running_mean=None, running_var=None,
                        momentum=0.1, eps=1e-5, layout="NCHW", dtype=None, ctx=None, z=None,
                        activation=None):
    """Training-mode batch norm: returns (y, save_mean, save_invstd).

    running_mean/running_var (float32 arrays) are updated in place when given:
    running = (1 - momentum) * running + momentum * batch (unbiased variance).
    Fused epilogue: y = activation(BN(x) + z), z a residual like x (or None),
    activation None or "relu" (in the same pass over memory).
    """
    eps, momentum = _real(eps, "eps"), _real(momentum, "momentum")
    x, desc, c, z, act = _forward_args(x, dtype, layout, z, activation)
    w, b, rm, rv, save_mean, sm, save_invstd, si = _training_channels(
        weight, bias, running_mean, running_var, c)
    y = _empty_like(x)
    with _held(ctx) as handle:
        _check(_forward_training_ex(handle, ctypes.byref(desc), _data(x),
                                    _data(z), _data(y), act, w, b, eps,
                                    momentum, rm, rv, sm, si), "bnorm_forward_training_ex")
    return y, save_mean, save_invstd


def batch_norm_inference(x, mean, var, weight=None, bias=None, eps=1e-5, layout="NCHW",
                         dtype=None, ctx=None, z=None, activation=None):
    """Inference-mode batch norm with given statistics: returns y (= activation(BN(x) + z))."""
    eps = _real(eps, "eps")
    x, desc, c, z, act = _forward_args(x, dtype, layout, z, activation)
    _, m = _channels(mean, c, "mean")
    _, v = _channels(var, c, "var")
    if m is None or v is None:
        raise ValueError("mean and var are required")
    _, w = _channels(weight, c, "weight")
    _, b = _channels(bias, c, "bias")
    y = _empty_like(x)
    with _held(ctx) as handle:
        _check(_forward_inference_ex(handle, ctypes.byref(desc), _data(x),
                                     _data(z), _data(y), act, w, b, m, v,
                                     eps), "bnorm_forward_inference_ex")
    return y


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, layout="NCHW", dtype=None, ctx=None, z=None,
               activation=None):
    """torch.nn.functional.batch_norm: returns y (= activation(BN(x) + z) when fused).

    training=True normalizes with the batch statistics and updates the
    running statistics in place; training=False uses the running statistics.
    """
    if training:
        return batch_norm_training(x, weight, bias, running_mean, running_var, momentum, eps,
                                   layout, dtype, ctx, z, activation)[0]
    return batch_norm_inference(x, running_mean, running_var, weight, bias, eps, layout, dtype,
                                ctx, z, activation)


# ---- backward ----

def _backward_args(x, dy, dtype, layout):
    """x and dy (required, alike), their dtype code, descriptor and c."""
    x, code = _tensor(x, dtype, "x")
    if dy is None:
        raise ValueError("dy is required")
    dy = _residual(dy, x, code, dtype, "dy")
    desc, c = _desc(x, layout, code)
    return x, dy, code, desc, c


def batch_norm_backward(x, dy, save_mean, save_invstd, weight=None, layout="NCHW",
                        frozen=False, need_dx=True, dtype=None, ctx=None, y=None,
                        activation=None, need_dz=False):
    """Gradients (dx, dgamma, dbeta) of batch norm; (dx, dgamma, dbeta, dz) with need_dz.

    frozen=False: training mode, through the batch statistics save_mean and
    save_invstd from batch_norm_training. frozen=True: the statistics are
    constants (eval mode): pass the running mean and 1/sqrt(var + eps).
    need_dx=False skips dx (returned as None).
    Fused forward (activation="relu", and/or a residual z): pass the forward
    output y; dy is masked where y <= 0, and need_dz=True also returns the
    residual's gradient dz (the masked dy), in the same pass.
    """
    if frozen and (_activation(activation) or need_dz):
        raise ValueError("the fused backward is training-mode only (frozen=False)")
    x, dy, code, desc, c = _backward_args(x, dy, dtype, layout)
    act = _activation(activation)
    if act and y is None:
        raise ValueError("y (the forward output) is required with activation='relu'")
    y = _residual(y, x, code, dtype, "y") if act else None
    _, w = _channels(weight, c, "weight")
    _, m = _channels(save_mean, c, "save_mean")
    _, s = _channels(save_invstd, c, "save_invstd")
    if m is None or s is None:
        raise ValueError("save_mean and save_invstd are required")
    dgamma, dg = _new_channels(c)
    dbeta, db = _new_channels(c)
    dx = _empty_like(x) if need_dx else None
    dz = _empty_like(x) if need_dz else None
    if frozen:
        with _held(ctx) as handle:
            _check(_backward_frozen(handle, ctypes.byref(desc), _data(x), _data(dy), _data(dx),
                                    w, m, s, dg, db), "bnorm_backward_frozen")
    else:  # bnorm_backward_ex with act NONE and no dz is bnorm_backward
        with _held(ctx) as handle:
            _check(_backward_ex(handle, ctypes.byref(desc), _data(x), _data(y), _data(dy),
                                _data(dx), _data(dz), act, w, None, m, s, dg, db),
                   "bnorm_backward_ex")
    return (dx, dgamma, dbeta, dz) if need_dz else (dx, dgamma, dbeta)


# ---- folding ----

def fold(mean, var, weight=None, bias=None, eps=1e-5):
    """(scale, shift) with y = x * scale + shift for a frozen batch norm."""
    eps = _real(eps, "eps")
    _, m = _channels(mean, np.size(mean), "mean")
    c = int(np.size(mean))
    _, v = _channels(var, c, "var")
    _, w = _channels(weight, c, "weight")
    _, b = _channels(bias, c, "bias")
    scale, sc = _new_channels(c)
    shift, sh = _new_channels(c)
    _check(_fold(c, w, b, m, v, eps, sc, sh), "bnorm_fold")
    return scale, shift


def fold_into_weights(weights, layer_bias, mean, var, weight=None, bias=None, eps=1e-5,
                      layout="OIHW"):
    """Folds a frozen batch norm into the preceding layer: returns (weights, bias).

    weights: float32 array in `layout` (OIHW, OHWI, OI, HWIO or IO; the
    output channel is the first axis for O*, the last for *O). layer_bias may
    be None (a layer without bias). weight/bias are the batch norm's gamma/beta.
    """
    eps = _real(eps, "eps")
    if layout not in _WEIGHT_LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(_WEIGHT_LAYOUTS)}, got {layout!r}")
    w_in = _contiguous(weights, np.float32)
    out_channels = w_in.shape[0] if layout.startswith("O") else w_in.shape[-1]
    per_output = w_in.size // out_channels if out_channels else 0
    _, m = _channels(mean, out_channels, "mean")
    _, v = _channels(var, out_channels, "var")
    _, g = _channels(weight, out_channels, "weight")
    _, b = _channels(bias, out_channels, "bias")
    _, lb = _channels(layer_bias, out_channels, "layer_bias")
    w_out = np.empty_like(w_in)
    b_out, bo = _new_channels(out_channels)
    _check(_fold_into_weights(_WEIGHT_LAYOUTS[layout], out_channels, per_output,
                              w_in.ctypes.data_as(_fptr), lb, w_out.ctypes.data_as(_fptr), bo, g,
                              b, m, v, eps), "bnorm_fold_into_weights")
    return w_out, b_out


# ---- split statistics: synchronized batch norm (see the module docstring) ----
# With one part, stats -> stats_merge -> forward_apply is bitwise
# batch_norm_training, and backward_reduce -> backward_apply batch_norm_backward.

def _count(v, name):
    """A count as a Python int that fits int64_t."""
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__}") from None
    if not -2**63 <= v < 2**63:
        raise OverflowError(f"{name}: {v} does not fit in int64")
    return v


def stats(x, layout="NCHW", dtype=None, ctx=None):
    """This part's statistics for synchronized batch norm: (count, mean, m2).

    count = n*spatial values per channel (a Python int); mean and m2 (the sum
    of squared deviations from the mean) are float64 arrays of c, the same
    bits batch_norm_training computes. An empty part (x.shape[0] == 0) gives
    count 0 and zeros. Combine the parts' statistics with stats_merge() in the
    same order on every rank, e.g. after ``comm.allgather((count, mean, m2))``
    (mpi4py) or ``torch.distributed.all_gather_object``; then forward_apply().
    """
    x, code = _tensor(x, dtype, "x")
    desc, c = _desc(x, layout, code)
    mean, mp = _new_channels(c, np.float64)
    m2, m2p = _new_channels(c, np.float64)
    with _held(ctx) as handle:
        _check(_stats(handle, ctypes.byref(desc), _data(x), mp, m2p), "bnorm_stats")
    return desc.n * desc.spatial, mean, m2


def stats_merge(counts, means, m2s):
    """Merges k parts' statistics (Chan's formula, left to right): (count, mean, m2).

    counts: k integers >= 0 (a part with count 0 is skipped); means, m2s:
    float64 arrays shaped [k, c], row j from stats() of part j. The result is
    the statistics of the parts concatenated in that order; with k == 1 it is
    the input, bit for bit. For synchronized batch norm, gather every part's
    stats() (``comm.allgather`` with mpi4py, ``torch.distributed.all_gather``),
    merge them in rank order on every rank (the same bits everywhere), and
    pass the result to forward_apply().
    """
    counts = np.asarray(counts)
    if counts.dtype.kind not in "iu":
        raise TypeError(f"counts: expected integers, got {counts.dtype}")
    counts = _contiguous(counts, np.int64)
    means = _contiguous(means, np.float64)
    m2s = _contiguous(m2s, np.float64)
    if counts.ndim != 1 or means.ndim != 2 or means.shape != m2s.shape or \
            means.shape[0] != counts.size:
        raise ValueError(f"expected counts of k and means, m2s of [k, c] (got counts "
                         f"{counts.shape}, means {means.shape}, m2s {m2s.shape})")
    k, c = means.shape
    count = _i64()
    mean, mp = _new_channels(c, np.float64)
    m2, m2p = _new_channels(c, np.float64)
    _check(_stats_merge(c, k, counts.ctypes.data_as(_i64ptr), means.ctypes.data_as(_dptr),
                        m2s.ctypes.data_as(_dptr), ctypes.byref(count), mp, m2p),
           "bnorm_stats_merge")
    return count.value, mean, m2


def forward_apply(x, weight, bias, count, mean, m2, eps=1e-5, momentum=0.1, running_mean=None,
                  running_var=None, layout="NCHW", dtype=None, ctx=None):
    """Training forward of one part with the whole batch's statistics: (y, save_mean, save_invstd).

    count, mean, m2: the merged statistics of the whole batch (stats_merge());
    count >= 2 and >= this part's n*spatial, m2 >= 0. weight/bias may be None
    (1 and 0). running_mean/running_var (float32) are updated in place as
    batch_norm_training does, with the whole batch's mean and unbiased
    variance m2 / (count - 1): every rank keeps the same running statistics.
    An empty part gives an empty y and the per-channel outputs.
    """
    eps, momentum = _real(eps, "eps"), _real(momentum, "momentum")
    x, code = _tensor(x, dtype, "x")
    desc, c = _desc(x, layout, code)
    count = _count(count, "count")
    _, m = _channels(mean, c, "mean", dtype=np.float64)
    _, v = _channels(m2, c, "m2", dtype=np.float64)
    if m is None or v is None:
        raise ValueError("mean and m2 are required")
    w, b, rm, rv, save_mean, sm, save_invstd, si = _training_channels(
        weight, bias, running_mean, running_var, c)
    y = _empty_like(x)
    with _held(ctx) as handle:
        _check(_forward_apply(handle, ctypes.byref(desc), _data(x), _data(y), w, b, count, m,
                              v, eps, momentum, rm, rv, sm, si), "bnorm_forward_apply")
    return y, save_mean, save_invstd


def backward_reduce(x, dy, save_mean, layout="NCHW", dtype=None, ctx=None):
    """This part's backward sums: (sum_dy, sum_dy_xmu), float64 arrays of c.

    sum_dy = sum(dy), sum_dy_xmu = sum(dy * (x - save_mean)) over this part,
    save_mean from forward_apply() (the whole batch's mean). For synchronized
    batch norm, add them over the parts, e.g. with mpi4py
    ``comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)`` or
    ``torch.distributed.all_reduce(torch.from_numpy(sums))`` on
    ``sums = np.stack([sum_dy, sum_dy_xmu])``, then call backward_apply().
    An empty part gives zeros.
    """
    x, dy, _, desc, c = _backward_args(x, dy, dtype, layout)
    _, m = _channels(save_mean, c, "save_mean")
    if m is None:
        raise ValueError("save_mean is required")
    sum_dy, sp = _new_channels(c, np.float64)
    sum_dy_xmu, sxp = _new_channels(c, np.float64)
    with _held(ctx) as handle:
        _check(_backward_reduce(handle, ctypes.byref(desc), _data(x), _data(dy), m, sp, sxp),
               "bnorm_backward_reduce")
    return sum_dy, sum_dy_xmu


def backward_apply(x, dy, weight, save_mean, save_invstd, total_count, sum_dy, sum_dy_xmu,
                   layout="NCHW", need_dx=True, dtype=None, ctx=None):
    """Training backward of one part given the whole batch's sums: (dx, dgamma, dbeta).

    total_count: values per channel of the whole batch (>= 1 and >= this
    part's n*spatial; the count from stats_merge()); sum_dy, sum_dy_xmu: the
    backward_reduce() sums added over all parts (float64). dx is this part's
    gradient (None with need_dx=False); dgamma and dbeta are the whole batch's,
    the same on every part. weight may be None (1).
    """
    x, dy, _, desc, c = _backward_args(x, dy, dtype, layout)
    total_count = _count(total_count, "total_count")
    _, w = _channels(weight, c, "weight")
    _, m = _channels(save_mean, c, "save_mean")
    _, s = _channels(save_invstd, c, "save_invstd")
    _, sd = _channels(sum_dy, c, "sum_dy", dtype=np.float64)
    _, sx = _channels(sum_dy_xmu, c, "sum_dy_xmu", dtype=np.float64)
    if m is None or s is None or sd is None or sx is None:
        raise ValueError("save_mean, save_invstd, sum_dy and sum_dy_xmu are required")
    dgamma, dg = _new_channels(c)
    dbeta, db = _new_channels(c)
    dx = _empty_like(x) if need_dx else None
    with _held(ctx) as handle:
        _check(_backward_apply(handle, ctypes.byref(desc), _data(x), _data(dy), _data(dx), w,
                               m, s, total_count, sd, sx, dg, db), "bnorm_backward_apply")
    return dx, dgamma, dbeta
