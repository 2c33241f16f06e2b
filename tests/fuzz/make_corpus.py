#!/usr/bin/env python3
"""Writes the seed corpus of bnorm_fuzz (tests/fuzz/corpus/).

Each seed is the fuzzer's fixed header (offsets as in bnorm_fuzz.cc) followed
by a short tail of bytes for the raw-bits data mode. A header of zeros is a
sane forward_training call on a 4x3x5 NCHW f32 tensor; each seed sets only
the fields it is about. Run from anywhere: python3 tests/fuzz/make_corpus.py
"""
import base64
import os
import random
import struct

# Header offsets (bnorm_fuzz.cc).
OP, TARGET, CTX, LAYOUT, DTYPE, SHAPE_MODE, N, C, SPATIAL = range(9)
EPS_SEL, MOM_SEL, ACT_SEL = 9, 10, 11
DATA_MODE = 12  # 4 bytes: x-like, dy/z, y mask, per-channel arrays
FLAGS, RERUN_CTX, PLACEMENT = 16, 17, 18
RAW_A, RAW_B, RAW_C, EPS_BITS, MOM_BITS, RAW_ENUM, SEED = 42, 50, 58, 66, 70, 74, 78
HEADER_SIZE = 86

OPS = {
    "fwd_train": 0, "fwd_infer": 1, "bwd": 2, "bwd_frozen": 3, "fwd_train_ex": 4,
    "fwd_infer_ex": 5, "bwd_ex": 6, "fold": 7, "fold_weights": 8, "misc": 9,
    "stats": 10, "stats_merge": 11, "fwd_apply": 12, "bwd_reduce": 13, "bwd_apply": 14,
}
# Placement kinds (first byte of a slot's pair).
OWN, NULL, SAME, INSIDE, ADJ_AFTER, ADJ_BEFORE, BEFORE = 0, 9, 10, 11, 12, 13, 14
FLAG_DESC_NULL, FLAG_RERUN, FLAG_PAD, FLAG_EMPTY = 1, 2, 4, 8  # EMPTY: n = 0 (split statistics)
# total_count of the apply functions (ACT_SEL): n*spatial, n*spatial + 1 + raw_enum's
# low byte, n*spatial * (2 + that byte % 7), n*spatial - 1, 0, 1, 2, interesting.
TOTAL_WHOLE, TOTAL_PLUS, TOTAL_PARTS, TOTAL_BELOW = 0, 1, 2, 3


def seed(name, op, tail=48, **f):
    h = bytearray(HEADER_SIZE)
    h[OP] = OPS[op]
    for key, off in (("target", TARGET), ("ctx", CTX), ("layout", LAYOUT), ("dtype", DTYPE),
                     ("shape_mode", SHAPE_MODE), ("n", N), ("c", C), ("spatial", SPATIAL),
                     ("eps", EPS_SEL), ("mom", MOM_SEL), ("act", ACT_SEL), ("flags", FLAGS),
                     ("rerun_ctx", RERUN_CTX)):
        if key in f:
            h[off] = f[key]
    for i, mode in enumerate(f.get("data", ())):
        h[DATA_MODE + i] = mode
    for slot, (kind, param) in f.get("place", {}).items():
        h[PLACEMENT + 2 * slot] = kind
        h[PLACEMENT + 2 * slot + 1] = param
    for key, off in (("raw_a", RAW_A), ("raw_b", RAW_B), ("raw_c", RAW_C)):
        if key in f:
            h[off:off + 8] = struct.pack("<q", f[key])
    if "eps_bits" in f:
        h[EPS_BITS:EPS_BITS + 4] = struct.pack("<I", f["eps_bits"])
    if "mom_bits" in f:
        h[MOM_BITS:MOM_BITS + 4] = struct.pack("<I", f["mom_bits"])
    if "raw_enum" in f:
        h[RAW_ENUM:RAW_ENUM + 4] = struct.pack("<i", f["raw_enum"])
    rng = random.Random(name)
    h[SEED:SEED + 8] = struct.pack("<Q", rng.getrandbits(64))
    return name, bytes(h) + bytes(rng.getrandbits(8) for _ in range(tail))


def seeds():
    out = []
    # Every tensor entry point, over the layouts and dtypes; small varied shapes.
    variants = [  # (entry point, layout, dtype, ReLU)
        ("fwd_train", 0, 0, 0), ("fwd_train", 1, 1, 0), ("fwd_train", 0, 2, 0),
        ("fwd_infer", 1, 2, 0), ("bwd", 0, 1, 0), ("bwd_frozen", 1, 0, 0),
        ("fwd_train_ex", 1, 2, 1), ("fwd_infer_ex", 0, 1, 1), ("bwd_ex", 1, 0, 1),
        ("bwd_ex", 0, 2, 0), ("fwd_infer_ex", 1, 0, 0),
    ]
    for i, (op, layout, dtype, relu) in enumerate(variants):
        name = f"{op}_{'nhwc' if layout else 'nchw'}_{['f32', 'bf16', 'f16'][dtype]}"
        out.append(seed(name + ("_relu" if relu else ""), op, layout=layout, dtype=dtype, n=i,
                        c=2 * i, spatial=3 * i, act=relu, target=i, ctx=i,
                        flags=FLAG_RERUN if i % 2 else 0, rerun_ctx=i + 1))
    out.append(seed("fold", "fold", c=7))
    out.append(seed("fold_weights_hwio_in_place", "fold_weights", c=5, spatial=8, layout=3,
                    place={6: (SAME, 0), 7: (SAME, 1)}))  # weights_out == weights, bias_out == bias
    # Shapes: several reduction units, many channels, one value per channel, huge/garbage.
    out.append(seed("train_many_values", "fwd_train", shape_mode=11, c=1, raw_a=30000))
    out.append(seed("train_nhwc_many_channels", "fwd_train", shape_mode=12, layout=1, n=3, c=40))
    out.append(seed("infer_medium", "fwd_infer", shape_mode=9, n=17, c=33, raw_a=49))
    out.append(seed("train_one_value", "fwd_train", shape_mode=13, n=0))  # TOO_FEW_VALUES
    out.append(seed("bwd_one_value", "bwd", shape_mode=13, n=0))
    out.append(seed("train_huge_shape", "fwd_train", shape_mode=14, n=6, c=3, spatial=2))
    out.append(seed("fold_weights_raw_shape", "fold_weights", shape_mode=15, raw_b=(1 << 62) + 3,
                    raw_c=2))
    # Arguments: NULL desc, bad eps/momentum, garbage enums, NULL buffers.
    out.append(seed("desc_null", "fwd_infer", flags=FLAG_DESC_NULL))
    out.append(seed("eps_nan", "fwd_train", eps=8))
    out.append(seed("eps_raw_denormal", "fwd_infer", eps=7, eps_bits=0x00000001))
    out.append(seed("momentum_raw_neg_zero", "fwd_train_ex", mom=5, mom_bits=0x80000000))
    out.append(seed("layout_garbage", "bwd", layout=250, raw_enum=7))
    out.append(seed("required_null", "bwd_frozen", place={7: (NULL, 0)}))
    out.append(seed("optional_nulls", "fwd_train", place={3: (NULL, 0), 4: (NULL, 0),
                                                          5: (NULL, 0), 8: (NULL, 0)}))
    # Aliasing: exact in place, partial overlaps, adjacent buffers.
    out.append(seed("train_in_place", "fwd_train", place={2: (SAME, 0)}))  # y == x
    out.append(seed("train_y_overlaps_x", "fwd_train", place={2: (INSIDE, 8)}))
    out.append(seed("train_y_adjacent_x", "fwd_train", place={2: (ADJ_AFTER, 0)}))
    out.append(seed("infer_ex_y_is_z", "fwd_infer_ex", place={2: (SAME, 1)}))
    out.append(seed("bwd_dx_is_dy", "bwd", place={3: (SAME, 1)}))
    out.append(seed("bwd_ex_dx_dz_both_dy", "bwd_ex", act=1, place={3: (SAME, 2), 4: (SAME, 2)}))
    out.append(seed("bwd_dgamma_in_x", "bwd", place={9: (INSIDE, 0)}))
    out.append(seed("infer_mean_is_var_padded", "fwd_infer", place={6: (SAME, 4)}, flags=FLAG_PAD))
    # Data: specials sprinkled, raw bits, constant channels.
    out.append(seed("train_specials", "fwd_train", data=(7, 7, 7, 7), c=5))
    out.append(seed("train_raw_bits_f16", "fwd_train", data=(6, 0, 0, 6), dtype=2, tail=400))
    out.append(seed("train_constant_channels", "fwd_train", data=(4, 0, 0, 0), eps=2))
    # Split statistics. stats_merge takes k = n partials (small shapes: n byte 9 gives k = 1,
    # 11 gives k = 3, 2 gives k = 6); its outputs may lie over partial 0.
    out.append(seed("stats_nchw_f32", "stats", c=4))
    out.append(seed("stats_nhwc_bf16_rerun", "stats", layout=1, dtype=1, n=5, c=9,
                    flags=FLAG_RERUN, rerun_ctx=2))
    out.append(seed("stats_many_values_f16", "stats", shape_mode=11, dtype=2, raw_a=20000))
    out.append(seed("stats_empty_x_null", "stats", flags=FLAG_EMPTY, place={0: (NULL, 0)}))
    out.append(seed("stats_specials", "stats", data=(7, 0, 0, 0), c=6))
    out.append(seed("merge_k3", "stats_merge", n=11, c=5))
    out.append(seed("merge_k1_bits", "stats_merge", n=9, c=7, data=(0, 0, 0, 7)))
    out.append(seed("merge_in_place", "stats_merge", n=2, c=3,
                    place={4: (SAME, 1), 5: (SAME, 2)}))  # mean_out == means, m2_out == m2s
    out.append(seed("merge_zero_counts", "stats_merge", n=11, data=(0, 2, 0, 0)))
    out.append(seed("merge_count_limit", "stats_merge", n=11, data=(0, 4, 0, 1)))
    out.append(seed("merge_specials", "stats_merge", n=2, data=(0, 3, 0, 7)))
    out.append(seed("fwd_apply_part", "fwd_apply", act=TOTAL_PLUS, raw_enum=40))
    out.append(seed("fwd_apply_nhwc_f16_parts", "fwd_apply", layout=1, dtype=2, n=4, c=10,
                    act=TOTAL_PARTS, raw_enum=3, flags=FLAG_RERUN, rerun_ctx=1))
    out.append(seed("fwd_apply_in_place", "fwd_apply", act=TOTAL_WHOLE, place={2: (SAME, 0)}))
    out.append(seed("fwd_apply_empty", "fwd_apply", act=TOTAL_PLUS, raw_enum=5, flags=FLAG_EMPTY,
                    place={0: (NULL, 0), 2: (NULL, 0)}))
    out.append(seed("fwd_apply_total_below", "fwd_apply", act=TOTAL_BELOW))
    out.append(seed("fwd_apply_m2_specials", "fwd_apply", data=(0, 0, 0, 7), c=8))
    out.append(seed("bwd_reduce_nchw_f32", "bwd_reduce", c=6))
    out.append(seed("bwd_reduce_nhwc_bf16", "bwd_reduce", layout=1, dtype=1, n=7, c=3,
                    flags=FLAG_RERUN, rerun_ctx=3))
    out.append(seed("bwd_reduce_empty", "bwd_reduce", flags=FLAG_EMPTY,
                    place={0: (NULL, 0), 2: (NULL, 0)}))
    out.append(seed("bwd_apply_parts", "bwd_apply", act=TOTAL_PARTS, raw_enum=1))
    out.append(seed("bwd_apply_dx_is_dy_nhwc", "bwd_apply", layout=1, act=TOTAL_PLUS, raw_enum=9,
                    place={3: (SAME, 2)}))
    out.append(seed("bwd_apply_empty", "bwd_apply", act=TOTAL_PLUS, raw_enum=2, flags=FLAG_EMPTY,
                    place={0: (NULL, 0), 2: (NULL, 0), 3: (NULL, 0)}))
    # NaN payloads through the 16-bit backward kernels on the best target: their dx
    # and dz NaNs must come out canonical (clang once kept the payload).
    out.append(seed("bwd_specials_f16", "bwd", data=(7, 7, 0, 0), dtype=2, c=5, n=6, spatial=9))
    out.append(seed("bwd_ex_specials_bf16_nhwc", "bwd_ex", data=(7, 7, 0, 0), dtype=1, layout=1,
                    c=5, n=6, spatial=9))
    out.append(seed("bwd_apply_specials_f16_nhwc", "bwd_apply", data=(7, 7, 0, 0), dtype=2,
                    layout=1, c=42, n=8, spatial=1, act=TOTAL_WHOLE))
    # The other entry points: contexts and their thread counts, target names.
    out.append(seed("misc_context_create", "misc", act=0, n=0, c=12))
    out.append(seed("misc_set_target", "misc", act=3, n=4, c=1, spatial=1))
    return out


# Inputs that once failed, kept as the fuzzer wrote them (base64).
REGRESSIONS = {
    # stats_merge whose exact m2 is beyond DBL_MAX: the library's Inf is right;
    # the checker once took |Inf - Inf| (NaN) as a mismatch.
    "regress_merge_m2_overflow":
        "CwCVs5JyjohRI9ByAIE+YiAAvAAAAAAAAAAAAAAAAAAAAAALAJWzknKOiFEj0HIAgT5iIAC8AAAAAAAAAAAAAAAAAAAA"
        "AAAAAAAAAAAAAAOgA4bWTXZJ2pWzknKOiFEj0HKOiGAiUGEOW+4eAvMmL6RXzp4BAGBgAA0WKgAAAAAAAAAAAAOgA4bW"
        "TXZJ2pWzknKOiFEj0HKOiGAiUGEOW+4eAvMmL6RXzp4BAGBgAA0WKuhgIlDQ",
    # bf16 backward where a = gamma * invstd (2^-155) rounds to 0 in f32: dx is
    # off by |a| * |g - sum_dy / m|, which the checker once bounded by |a| * |g|.
    "regress_bwd_a_underflow":
        "BisrJis7KyIiIiIiIiIiJggHAAAAAAAAACoyNmeFSVFmmz3NRwBY7xDRXbVuaQHN8GEE5M0s9Jubr6IF+OIAAAAAAHNB"
        "WmMyYOn+hEHFXbVuaQHN8GEE5M0s9Jubr6IFJuBT4y0axj+YKzsLAAI=",
    # stats_merge of means whose squared difference is subnormal: the library
    # rounded delta^2 first and multiplied its error by n_a n_b / n (590
    # denorm_min); it now forms delta * (delta * cross) (CI at 460ef28).
    "regress_merge_subnormal_square":
        "CwAAAAAAjAAAAAAAAAAAtggAAAAA/wIAAAAAAAAAAAAAAAAAAAAAfiYAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAvkuu"
        "Fh6NGWzenRvzSioRCZh17c5c1h5GGqIAIgAAAAAAAAAAAAAAAAAAAAAAAAAAACoAAAAAAAAAYZ1+lh84",
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    corpus = os.path.join(here, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for old in os.listdir(corpus):
        os.remove(os.path.join(corpus, old))
    for name, data in seeds():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    for name, text in REGRESSIONS.items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(base64.b64decode(text))


if __name__ == "__main__":
    main()
