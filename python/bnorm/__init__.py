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
(``dtype="bfloat16"``); per-channel arrays are float32. Layout "NCHW" means
x.shape == (N, C, *spatial), "NHWC" means (N, *spatial, C); a 2-D (N, C)
array is the same in both. Errors raise bnorm.Error, whose ``status`` is the
C status code; invalid calls change nothing.

The library is found through $BNORM_LIBRARY, next to this package, or on the
system's library path (libbnorm.so.0).
"""

import ctypes
import ctypes.util
import os

import numpy as np

__all__ = [
    "Error", "Context", "batch_norm", "batch_norm_training", "batch_norm_inference",
    "batch_norm_backward", "fold", "fold_into_weights", "version", "active_target",
]

# ---- the library ----

def _load_library():
    candidates = []
    if os.environ.get("BNORM_LIBRARY"):
        candidates.append(os.environ["BNORM_LIBRARY"])
    here = os.path.dirname(os.path.abspath(__file__))
    candidates += [os.path.join(here, "libbnorm.so.0"), os.path.join(here, "libbnorm.so")]
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

_LAYOUTS = {"NCHW": 0, "NHWC": 1}
_ACTIVATIONS = {None: 0, "none": 0, "relu": 1}
_F32, _BF16, _F16 = 0, 1, 2
_WEIGHT_LAYOUTS = {"OIHW": 0, "OHWI": 1, "OI": 2, "HWIO": 3, "IO": 4}


class Error(RuntimeError):
    """A bnorm call failed; ``status`` is the C bnorm_status value."""

    def __init__(self, status, where):
        self.status = int(status)
        message = _status_string(status).decode()
        super().__init__(f"{where}: {message} (status {self.status})")


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
        handle = _ptr()
        _check(_context_create(int(threads), ctypes.byref(handle)), "bnorm_context_create")
        self._handle = handle

    @property
    def threads(self):
        return _context_threads(self._handle)

    def close(self):
        if self._handle is not None:
            _context_destroy(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass



def _context(ctx):
    """The C handle of ctx (None: the default context)."""
    if ctx is None:
        return None
    if not isinstance(ctx, Context):
        raise TypeError("ctx must be a bnorm.Context or None")
    if ctx._handle is None:
        raise ValueError("bnorm.Context is closed")
    return ctx._handle


# ---- argument helpers ----

def _tensor(x, dtype, name):
    """(contiguous array, bnorm dtype code) for a tensor argument."""
    x = np.asarray(x)
    if dtype in ("bfloat16", "bf16"):
        if x.dtype != np.uint16:
            raise TypeError(f"{name}: bfloat16 data must be a uint16 array of bf16 patterns")
        code = _BF16
    elif dtype is None or dtype in ("float32", "float16", "f32", "f16"):
        if x.dtype == np.float32:
            code = _F32
        elif x.dtype == np.float16:
            code = _F16
        else:
            raise TypeError(f"{name}: expected float32 or float16 (got {x.dtype}); "
                            "pass dtype='bfloat16' for bf16 bits in uint16")
    else:
        raise ValueError(f"unknown dtype {dtype!r}")
    if x.ndim < 2:
        raise ValueError(f"{name}: expected at least 2 dimensions, got shape {x.shape}")
    return np.ascontiguousarray(x), code


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


def _channels(a, c, name, writable=False):
    """A float32 per-channel array (or None) of c values, as a ctypes pointer."""
    if a is None:
        return None, None
    if writable:
        if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
                and a.flags.writeable):
            raise TypeError(f"{name}: must be a writable contiguous float32 numpy array "
                            "(it is updated in place)")
    else:
        a = np.ascontiguousarray(a, dtype=np.float32)
    if a.size != c:
        raise ValueError(f"{name}: expected {c} values, got {a.size}")
    return a, a.ctypes.data_as(_fptr)


def _new_channels(c):
    a = np.empty(c, np.float32)
    return a, a.ctypes.data_as(_fptr)


def _data(a):
    return ctypes.c_void_p(a.ctypes.data)


# ---- forward ----

def _activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None, 'none' or 'relu', got {activation!r}")
    return _ACTIVATIONS[activation]


def _residual(z, x, code, dtype):
    """z as a contiguous array like x, or None."""
    if z is None:
        return None
    z, zcode = _tensor(z, dtype, "z")
    if z.shape != x.shape or zcode != code:
        raise ValueError(f"z must match x in shape and dtype ({z.shape} vs {x.shape})")
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
    x, desc, c, z, act = _forward_args(x, dtype, layout, z, activation)
    _, w = _channels(weight, c, "weight")
    _, b = _channels(bias, c, "bias")
    _, rm = _channels(running_mean, c, "running_mean", writable=True)
    _, rv = _channels(running_var, c, "running_var", writable=True)
    save_mean, sm = _new_channels(c)
    save_invstd, si = _new_channels(c)
    y = np.empty_like(x)
    _check(_forward_training_ex(_context(ctx), ctypes.byref(desc), _data(x),
                                _data(z) if z is not None else None, _data(y), act, w, b, eps,
                                momentum, rm, rv, sm, si), "bnorm_forward_training_ex")
    return y, save_mean, save_invstd


def batch_norm_inference(x, mean, var, weight=None, bias=None, eps=1e-5, layout="NCHW",
                         dtype=None, ctx=None, z=None, activation=None):
    """Inference-mode batch norm with given statistics: returns y (= activation(BN(x) + z))."""
    x, desc, c, z, act = _forward_args(x, dtype, layout, z, activation)
    _, m = _channels(mean, c, "mean")
    _, v = _channels(var, c, "var")
    if m is None or v is None:
        raise ValueError("mean and var are required")
    _, w = _channels(weight, c, "weight")
    _, b = _channels(bias, c, "bias")
    y = np.empty_like(x)
    _check(_forward_inference_ex(_context(ctx), ctypes.byref(desc), _data(x),
                                 _data(z) if z is not None else None, _data(y), act, w, b, m, v,
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
    if frozen and (activation is not None or need_dz):
        raise ValueError("the fused backward is training-mode only (frozen=False)")
    x, code = _tensor(x, dtype, "x")
    dy, code_dy = _tensor(dy, dtype, "dy")
    if dy.shape != x.shape or code_dy != code:
        raise ValueError(f"dy must match x in shape and dtype ({dy.shape} vs {x.shape})")
    act = _activation(activation)
    if act and y is None:
        raise ValueError("y (the forward output) is required with activation='relu'")
    y = _residual(y, x, code, dtype) if act else None
    desc, c = _desc(x, layout, code)
    _, w = _channels(weight, c, "weight")
    _, m = _channels(save_mean, c, "save_mean")
    _, s = _channels(save_invstd, c, "save_invstd")
    if m is None or s is None:
        raise ValueError("save_mean and save_invstd are required")
    dgamma, dg = _new_channels(c)
    dbeta, db = _new_channels(c)
    dx = np.empty_like(x) if need_dx else None
    dz = np.empty_like(x) if need_dz else None
    data = lambda a: _data(a) if a is not None else None  # noqa: E731
    if frozen:
        _check(_backward_frozen(_context(ctx), ctypes.byref(desc), _data(x), _data(dy), data(dx),
                                w, m, s, dg, db), "bnorm_backward_frozen")
    else:  # bnorm_backward_ex with act NONE and no dz is bnorm_backward
        _check(_backward_ex(_context(ctx), ctypes.byref(desc), _data(x), data(y), _data(dy),
                            data(dx), data(dz), act, w, None, m, s, dg, db), "bnorm_backward_ex")
    return (dx, dgamma, dbeta, dz) if need_dz else (dx, dgamma, dbeta)


# ---- folding ----

def fold(mean, var, weight=None, bias=None, eps=1e-5):
    """(scale, shift) with y = x * scale + shift for a frozen batch norm."""
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
    if layout not in _WEIGHT_LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(_WEIGHT_LAYOUTS)}, got {layout!r}")
    w_in = np.ascontiguousarray(weights, dtype=np.float32)
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
