// Bad input: every argument of every entry point, each returning its
// documented status and leaving every byte of every buffer unchanged.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "test_support.h"

namespace bnorm_test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// All buffers live in one arena so that "unchanged" covers every byte any
// call could touch, including aliased ones.
struct Arena {
  static constexpr int64_t kN = 2, kC = 3, kS = 5, kE = kN * kC * kS;
  std::vector<float> data;
  float *x, *y, *dy, *dx, *gamma, *beta, *rm, *rv, *sm, *si, *dgamma, *dbeta;

  Arena() : data(static_cast<size_t>(4 * kE + 8 * kC)) {
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0.25f + static_cast<float>(i % 17);
    float* p = data.data();
    x = p;
    y = p + kE;
    dy = p + 2 * kE;
    dx = p + 3 * kE;
    float* q = p + 4 * kE;
    gamma = q;
    beta = q + kC;
    rm = q + 2 * kC;
    rv = q + 3 * kC;
    sm = q + 4 * kC;
    si = q + 5 * kC;
    dgamma = q + 6 * kC;
    dbeta = q + 7 * kC;
  }
  static bnorm_tensor_desc Desc() {
    return bnorm_tensor_desc{kN, kC, kS, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  }
};

struct Case {
  std::string name;
  bnorm_status expected;
  std::function<void(Arena&, bnorm_tensor_desc*&, bnorm_tensor_desc&)> mutate_desc;
};

// Bad descriptors, common to every entry point.
std::vector<Case> DescCases() {
  using D = bnorm_tensor_desc;
  auto set = [](std::function<void(D&)> f) { return [f](Arena&, D*&, D& d) { f(d); }; };
  constexpr int64_t big = std::numeric_limits<int64_t>::max();
  std::vector<Case> cases = {
      {"desc_null", BNORM_ERR_NULL_POINTER, [](Arena&, D*& p, D&) { p = nullptr; }},
      {"n_zero", BNORM_ERR_BAD_SHAPE, set([](D& d) { d.n = 0; })},
      {"c_zero", BNORM_ERR_BAD_SHAPE, set([](D& d) { d.c = 0; })},
      {"spatial_zero", BNORM_ERR_BAD_SHAPE, set([](D& d) { d.spatial = 0; })},
      {"n_negative", BNORM_ERR_BAD_SHAPE, set([](D& d) { d.n = -2; })},
      {"c_min", BNORM_ERR_BAD_SHAPE, set([](D& d) { d.c = -big - 1; })},
      {"spatial_negative", BNORM_ERR_BAD_SHAPE, set([](D& d) { d.spatial = -1; })},
      {"n_times_c_overflows", BNORM_ERR_BAD_SHAPE, set([](D& d) {
         d.n = big;
         d.c = 2;
       })},
      {"elements_overflow", BNORM_ERR_BAD_SHAPE, set([](D& d) {
         d.n = int64_t{1} << 40;
         d.c = int64_t{1} << 20;
         d.spatial = int64_t{1} << 10;
       })},
      {"bytes_overflow", BNORM_ERR_BAD_SHAPE, set([](D& d) {
         d.n = int64_t{1} << 61;
         d.c = 1;
         d.spatial = 1;
       })},
      {"layout_2", BNORM_ERR_BAD_ARGUMENT, set([](D& d) {
         int v = 2;
         std::memcpy(&d.layout, &v, sizeof v);
       })},
      {"layout_negative", BNORM_ERR_BAD_ARGUMENT, set([](D& d) {
         int v = -1;
         std::memcpy(&d.layout, &v, sizeof v);
       })},
      {"dtype_3", BNORM_ERR_BAD_ARGUMENT, set([](D& d) {
         int v = 3;
         std::memcpy(&d.dtype, &v, sizeof v);
       })},
      {"dtype_huge", BNORM_ERR_BAD_ARGUMENT, set([](D& d) {
         int v = 0x7fffffff;
         std::memcpy(&d.dtype, &v, sizeof v);
       })},
  };
  return cases;
}

// Runs call() on a fresh arena and checks status and that nothing changed.
void ExpectRejected(
    const std::string& what, bnorm_status expected,
    const std::function<bnorm_status(Arena&, const bnorm_tensor_desc*)>& call,
    const std::function<void(Arena&, bnorm_tensor_desc*&, bnorm_tensor_desc&)>& mutate) {
  Arena a;
  bnorm_tensor_desc desc = Arena::Desc();
  bnorm_tensor_desc* pdesc = &desc;
  mutate(a, pdesc, desc);
  const auto before = Bytes(a.data);
  EXPECT_EQ(call(a, pdesc), expected) << what;
  EXPECT_EQ(Bytes(a.data), before) << what << ": a buffer changed on error";
}

// ---- forward training ----

struct TrainArgs {
  const float *x, *gamma, *beta;
  float *y, *rm, *rv, *sm, *si;
  float eps = 1e-5f, momentum = 0.1f;
};

TrainArgs DefaultTrain(Arena& a) {
  return TrainArgs{a.x, a.gamma, a.beta, a.y, a.rm, a.rv, a.sm, a.si};
}

bnorm_status CallTrain(const TrainArgs& t, const bnorm_tensor_desc* d) {
  return bnorm_forward_training(nullptr, d, t.x, t.y, t.gamma, t.beta, t.eps, t.momentum, t.rm,
                                t.rv, t.sm, t.si);
}

TEST(Validation, ForwardTraining) {
  for (const Case& c : DescCases()) {
    ExpectRejected(
        "training/" + c.name, c.expected,
        [](Arena& a, const bnorm_tensor_desc* d) { return CallTrain(DefaultTrain(a), d); },
        c.mutate_desc);
  }
  struct ArgCase {
    std::string name;
    bnorm_status expected;
    std::function<void(Arena&, TrainArgs&)> mutate;
  };
  const std::vector<ArgCase> cases = {
      {"x_null", BNORM_ERR_NULL_POINTER, [](Arena&, TrainArgs& t) { t.x = nullptr; }},
      {"y_null", BNORM_ERR_NULL_POINTER, [](Arena&, TrainArgs& t) { t.y = nullptr; }},
      {"eps_negative", BNORM_ERR_BAD_ARGUMENT, [](Arena&, TrainArgs& t) { t.eps = -1.0f; }},
      {"eps_nan", BNORM_ERR_BAD_ARGUMENT, [](Arena&, TrainArgs& t) { t.eps = kNaN; }},
      {"eps_inf", BNORM_ERR_BAD_ARGUMENT, [](Arena&, TrainArgs& t) { t.eps = kInf; }},
      {"momentum_negative", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, TrainArgs& t) { t.momentum = -0.1f; }},
      {"momentum_above_one", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, TrainArgs& t) { t.momentum = 1.5f; }},
      {"momentum_nan", BNORM_ERR_BAD_ARGUMENT, [](Arena&, TrainArgs& t) { t.momentum = kNaN; }},
      {"momentum_inf", BNORM_ERR_BAD_ARGUMENT, [](Arena&, TrainArgs& t) { t.momentum = kInf; }},
      {"y_partly_over_x", BNORM_ERR_ALIAS, [](Arena& a, TrainArgs& t) { t.y = a.x + 1; }},
      {"y_over_gamma", BNORM_ERR_ALIAS, [](Arena& a, TrainArgs& t) { t.y = a.gamma - 2; }},
      {"running_mean_is_running_var", BNORM_ERR_ALIAS, [](Arena& a, TrainArgs& t) { t.rv = a.rm; }},
      {"running_var_in_x", BNORM_ERR_ALIAS, [](Arena& a, TrainArgs& t) { t.rv = a.x + 4; }},
      {"save_mean_is_gamma", BNORM_ERR_ALIAS, [](Arena& a, TrainArgs& t) { t.sm = a.gamma; }},
      {"save_invstd_over_save_mean", BNORM_ERR_ALIAS,
       [](Arena& a, TrainArgs& t) { t.si = a.sm + 1; }},
      {"save_mean_in_y", BNORM_ERR_ALIAS, [](Arena& a, TrainArgs& t) { t.sm = a.y + 3; }},
      {"running_mean_is_beta", BNORM_ERR_ALIAS, [](Arena& a, TrainArgs& t) { t.rm = a.beta; }},
  };
  for (const ArgCase& c : cases) {
    ExpectRejected(
        "training/" + c.name, c.expected,
        [&](Arena& a, const bnorm_tensor_desc* d) {
          TrainArgs t = DefaultTrain(a);
          c.mutate(a, t);
          return CallTrain(t, d);
        },
        [](Arena&, bnorm_tensor_desc*&, bnorm_tensor_desc&) {});
  }
  // n * spatial < 2: the variance is undefined.
  for (auto dims : {std::vector<int64_t>{1, 3, 1}, std::vector<int64_t>{1, 1, 1}}) {
    ExpectRejected(
        "training/too_few", BNORM_ERR_TOO_FEW_VALUES,
        [](Arena& a, const bnorm_tensor_desc* d) { return CallTrain(DefaultTrain(a), d); },
        [dims](Arena&, bnorm_tensor_desc*&, bnorm_tensor_desc& d) {
          d.n = dims[0];
          d.c = dims[1];
          d.spatial = dims[2];
        });
  }
}

TEST(Validation, ForwardTrainingAcceptsTheAllowedForms) {
  Arena a;
  const bnorm_tensor_desc d = Arena::Desc();
  // In place, negative zero eps, momentum at both ends, gamma == beta.
  EXPECT_EQ(bnorm_forward_training(nullptr, &d, a.x, a.x, a.gamma, a.gamma, -0.0f, 0.0f, a.rm, a.rv,
                                   a.sm, a.si),
            BNORM_OK);
  EXPECT_EQ(bnorm_forward_training(nullptr, &d, a.x, a.y, nullptr, nullptr, 0.0f, 1.0f, nullptr,
                                   nullptr, nullptr, nullptr),
            BNORM_OK);
}

// ---- forward inference ----

struct InferArgs {
  const float *x, *gamma, *beta, *mean, *var;
  float* y;
  float eps = 1e-5f;
};

bnorm_status CallInfer(const InferArgs& t, const bnorm_tensor_desc* d) {
  return bnorm_forward_inference(nullptr, d, t.x, t.y, t.gamma, t.beta, t.mean, t.var, t.eps);
}

InferArgs DefaultInfer(Arena& a) { return InferArgs{a.x, a.gamma, a.beta, a.rm, a.rv, a.y}; }

TEST(Validation, ForwardInference) {
  for (const Case& c : DescCases()) {
    ExpectRejected(
        "inference/" + c.name, c.expected,
        [](Arena& a, const bnorm_tensor_desc* d) { return CallInfer(DefaultInfer(a), d); },
        c.mutate_desc);
  }
  struct ArgCase {
    std::string name;
    bnorm_status expected;
    std::function<void(Arena&, InferArgs&)> mutate;
  };
  const std::vector<ArgCase> cases = {
      {"x_null", BNORM_ERR_NULL_POINTER, [](Arena&, InferArgs& t) { t.x = nullptr; }},
      {"y_null", BNORM_ERR_NULL_POINTER, [](Arena&, InferArgs& t) { t.y = nullptr; }},
      {"mean_null", BNORM_ERR_NULL_POINTER, [](Arena&, InferArgs& t) { t.mean = nullptr; }},
      {"var_null", BNORM_ERR_NULL_POINTER, [](Arena&, InferArgs& t) { t.var = nullptr; }},
      {"eps_negative", BNORM_ERR_BAD_ARGUMENT, [](Arena&, InferArgs& t) { t.eps = -1e-5f; }},
      {"eps_nan", BNORM_ERR_BAD_ARGUMENT, [](Arena&, InferArgs& t) { t.eps = kNaN; }},
      {"eps_minus_inf", BNORM_ERR_BAD_ARGUMENT, [](Arena&, InferArgs& t) { t.eps = -kInf; }},
      {"y_partly_over_x", BNORM_ERR_ALIAS, [](Arena& a, InferArgs& t) { t.y = a.x + 7; }},
      {"y_over_mean", BNORM_ERR_ALIAS, [](Arena& a, InferArgs& t) { t.y = a.rm - Arena::kE + 1; }},
      {"y_over_var", BNORM_ERR_ALIAS, [](Arena& a, InferArgs& t) { t.y = a.rv; }},
  };
  for (const ArgCase& c : cases) {
    ExpectRejected(
        "inference/" + c.name, c.expected,
        [&](Arena& a, const bnorm_tensor_desc* d) {
          InferArgs t = DefaultInfer(a);
          c.mutate(a, t);
          return CallInfer(t, d);
        },
        [](Arena&, bnorm_tensor_desc*&, bnorm_tensor_desc&) {});
  }
  // Inference has no minimum count; mean == var and in place are allowed.
  Arena a;
  bnorm_tensor_desc d{1, 3, 1, BNORM_LAYOUT_NHWC, BNORM_DTYPE_F32};
  EXPECT_EQ(bnorm_forward_inference(nullptr, &d, a.x, a.x, nullptr, nullptr, a.rv, a.rv, 0.0f),
            BNORM_OK);
}

// ---- backward (training and frozen) ----

struct BackArgs {
  const float *x, *dy, *gamma, *mean, *invstd;
  float *dx, *dgamma, *dbeta;
};

BackArgs DefaultBack(Arena& a) {
  return BackArgs{a.x, a.dy, a.gamma, a.sm, a.si, a.dx, a.dgamma, a.dbeta};
}

bnorm_status CallBack(bool frozen, const BackArgs& t, const bnorm_tensor_desc* d) {
  return frozen ? bnorm_backward_frozen(nullptr, d, t.x, t.dy, t.dx, t.gamma, t.mean, t.invstd,
                                        t.dgamma, t.dbeta)
                : bnorm_backward(nullptr, d, t.x, t.dy, t.dx, t.gamma, t.mean, t.invstd, t.dgamma,
                                 t.dbeta);
}

TEST(Validation, Backward) {
  for (bool frozen : {false, true}) {
    const std::string fn = frozen ? "backward_frozen/" : "backward/";
    for (const Case& c : DescCases()) {
      ExpectRejected(
          fn + c.name, c.expected,
          [frozen](Arena& a, const bnorm_tensor_desc* d) {
            return CallBack(frozen, DefaultBack(a), d);
          },
          c.mutate_desc);
    }
    struct ArgCase {
      std::string name;
      bnorm_status expected;
      std::function<void(Arena&, BackArgs&)> mutate;
    };
    const std::vector<ArgCase> cases = {
        {"x_null", BNORM_ERR_NULL_POINTER, [](Arena&, BackArgs& t) { t.x = nullptr; }},
        {"dy_null", BNORM_ERR_NULL_POINTER, [](Arena&, BackArgs& t) { t.dy = nullptr; }},
        {"mean_null", BNORM_ERR_NULL_POINTER, [](Arena&, BackArgs& t) { t.mean = nullptr; }},
        {"invstd_null", BNORM_ERR_NULL_POINTER, [](Arena&, BackArgs& t) { t.invstd = nullptr; }},
        {"dx_is_x", BNORM_ERR_ALIAS, [](Arena& a, BackArgs& t) { t.dx = a.x; }},
        {"dx_partly_over_dy", BNORM_ERR_ALIAS, [](Arena& a, BackArgs& t) { t.dx = a.dy + 1; }},
        {"dx_over_gamma", BNORM_ERR_ALIAS, [](Arena& a, BackArgs& t) { t.dx = a.gamma - 5; }},
        {"dgamma_is_dbeta", BNORM_ERR_ALIAS, [](Arena& a, BackArgs& t) { t.dbeta = a.dgamma; }},
        {"dgamma_is_mean", BNORM_ERR_ALIAS, [](Arena& a, BackArgs& t) { t.dgamma = a.sm; }},
        {"dbeta_in_dy", BNORM_ERR_ALIAS, [](Arena& a, BackArgs& t) { t.dbeta = a.dy + 2; }},
        {"dbeta_over_invstd", BNORM_ERR_ALIAS, [](Arena& a, BackArgs& t) { t.dbeta = a.si - 1; }},
    };
    for (const ArgCase& c : cases) {
      ExpectRejected(
          fn + c.name, c.expected,
          [&](Arena& a, const bnorm_tensor_desc* d) {
            BackArgs t = DefaultBack(a);
            c.mutate(a, t);
            return CallBack(frozen, t, d);
          },
          [](Arena&, bnorm_tensor_desc*&, bnorm_tensor_desc&) {});
    }
    // In place dx == dy, and a single value per channel, are allowed.
    Arena a;
    bnorm_tensor_desc d{1, 3, 1, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
    EXPECT_EQ(
        CallBack(frozen, BackArgs{a.x, a.dy, nullptr, a.sm, a.si, a.dy, a.dgamma, a.dbeta}, &d),
        BNORM_OK);
  }
}

// ---- the fused entry points (_ex) ----

// Every descriptor case, and the arguments the _ex functions add (z, y for
// the ReLU backward, dz), for each of the three: the
// documented status and no byte changed. Forward calls read z from the
// arena's dx slot; backward_ex reads y from the y slot and writes dz into
// the dx slot, dx into the spare room of the y slot's neighbours below.
TEST(Validation, FusedEntryPoints) {
  struct ExArgs {
    const float *x, *z, *y_in, *dy, *gamma, *beta, *mean, *var;
    float *y, *dx, *dz, *sm, *si, *dgamma, *dbeta;
    bnorm_activation act = BNORM_ACT_RELU;
    float eps = 1e-5f, momentum = 0.1f;
  };
  const auto defaults = [](Arena& a) {
    ExArgs t{};
    t.x = a.x;
    t.z = a.dx;
    t.y_in = a.y;
    t.dy = a.dy;
    t.gamma = a.gamma;
    t.beta = a.beta;
    t.mean = a.rm;
    t.var = a.rv;
    t.y = a.y;
    t.dx = nullptr;  // backward_ex: dz only, unless a case sets dx
    t.dz = a.dx;
    t.sm = a.sm;
    t.si = a.si;
    t.dgamma = a.dgamma;
    t.dbeta = a.dbeta;
    return t;
  };
  const auto train = [](const ExArgs& t, const bnorm_tensor_desc* d) {
    return bnorm_forward_training_ex(nullptr, d, t.x, t.z, t.y, t.act, t.gamma, t.beta, t.eps,
                                     t.momentum, nullptr, nullptr, t.sm, t.si);
  };
  const auto infer = [](const ExArgs& t, const bnorm_tensor_desc* d) {
    return bnorm_forward_inference_ex(nullptr, d, t.x, t.z, t.y, t.act, t.gamma, t.beta, t.mean,
                                      t.var, t.eps);
  };
  const auto back = [](const ExArgs& t, const bnorm_tensor_desc* d) {
    return bnorm_backward_ex(nullptr, d, t.x, t.y_in, t.dy, t.dx, t.dz, t.act, t.gamma, t.beta,
                             t.mean, t.si, t.dgamma, t.dbeta);
  };
  using Call = std::function<bnorm_status(const ExArgs&, const bnorm_tensor_desc*)>;
  const std::vector<std::pair<std::string, Call>> calls = {
      {"training_ex", train}, {"inference_ex", infer}, {"backward_ex", back}};
  for (const auto& entry : calls) {
    const std::string& fn = entry.first;
    const Call& call = entry.second;
    for (const Case& c : DescCases()) {
      ExpectRejected(
          fn + "/" + c.name, c.expected,
          [&](Arena& a, const bnorm_tensor_desc* d) { return call(defaults(a), d); },
          c.mutate_desc);
    }
  }
  struct ArgCase {
    std::string fn, name;
    bnorm_status expected;
    std::function<void(Arena&, ExArgs&)> mutate;
  };
  const std::vector<ArgCase> cases = {
      {"training_ex", "x_null", BNORM_ERR_NULL_POINTER, [](Arena&, ExArgs& t) { t.x = nullptr; }},
      {"training_ex", "y_null", BNORM_ERR_NULL_POINTER, [](Arena&, ExArgs& t) { t.y = nullptr; }},
      {"training_ex", "eps_nan", BNORM_ERR_BAD_ARGUMENT, [](Arena&, ExArgs& t) { t.eps = kNaN; }},
      {"training_ex", "momentum_above_one", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, ExArgs& t) { t.momentum = 2.0f; }},
      {"training_ex", "y_partly_over_z", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.y = a.dx + 1; }},
      {"training_ex", "y_partly_over_x", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.y = a.x + 3; }},
      {"training_ex", "save_mean_in_z", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.sm = a.dx + 2; }},
      {"inference_ex", "mean_null", BNORM_ERR_NULL_POINTER,
       [](Arena&, ExArgs& t) { t.mean = nullptr; }},
      {"inference_ex", "var_null", BNORM_ERR_NULL_POINTER,
       [](Arena&, ExArgs& t) { t.var = nullptr; }},
      {"inference_ex", "eps_negative", BNORM_ERR_BAD_ARGUMENT,
       [](Arena&, ExArgs& t) { t.eps = -1.0f; }},
      {"inference_ex", "y_partly_over_z", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.y = a.dx - 1; }},
      {"inference_ex", "y_over_var", BNORM_ERR_ALIAS, [](Arena& a, ExArgs& t) { t.y = a.rv - 1; }},
      {"backward_ex", "relu_without_y", BNORM_ERR_NULL_POINTER,
       [](Arena&, ExArgs& t) { t.y_in = nullptr; }},
      {"backward_ex", "dy_null", BNORM_ERR_NULL_POINTER, [](Arena&, ExArgs& t) { t.dy = nullptr; }},
      {"backward_ex", "save_mean_null", BNORM_ERR_NULL_POINTER,
       [](Arena&, ExArgs& t) { t.mean = nullptr; }},
      {"backward_ex", "dz_partly_over_dy", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.dz = a.dy + 1; }},
      {"backward_ex", "dz_over_y", BNORM_ERR_ALIAS, [](Arena& a, ExArgs& t) { t.dz = a.y + 2; }},
      {"backward_ex", "dx_is_dz", BNORM_ERR_ALIAS, [](Arena& a, ExArgs& t) { t.dx = a.dx; }},
      {"backward_ex", "dz_over_dgamma", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.dgamma = a.dx + 5; }},
      // beta is never read, but like every buffer it may not overlap an output.
      {"backward_ex", "beta_is_dbeta", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.beta = a.dbeta; }},
      {"backward_ex", "beta_partly_over_dgamma", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.beta = a.dgamma + 1; }},
      {"backward_ex", "beta_in_dz", BNORM_ERR_ALIAS,
       [](Arena& a, ExArgs& t) { t.beta = a.dx + 4; }},
  };
  for (const ArgCase& c : cases) {
    const auto named = std::find_if(calls.begin(), calls.end(),
                                    [&](const auto& entry) { return entry.first == c.fn; });
    ASSERT_NE(named, calls.end()) << c.fn;
    const Call& call = named->second;
    ExpectRejected(
        c.fn + "/" + c.name, c.expected,
        [&](Arena& a, const bnorm_tensor_desc* d) {
          ExArgs t = defaults(a);
          c.mutate(a, t);
          return call(t, d);
        },
        [](Arena&, bnorm_tensor_desc*&, bnorm_tensor_desc&) {});
  }
  // The defaults themselves are accepted (so each case above fails for its
  // own reason), as are y == z and dz == dy in place.
  for (const auto& entry : calls) {
    Arena a;
    const bnorm_tensor_desc d = Arena::Desc();
    EXPECT_EQ(entry.second(defaults(a), &d), BNORM_OK) << entry.first;
  }
  Arena a;
  const bnorm_tensor_desc d = Arena::Desc();
  ExArgs t = defaults(a);
  t.y = a.dx;  // y over z, exactly
  EXPECT_EQ(infer(t, &d), BNORM_OK);
  EXPECT_EQ(train(t, &d), BNORM_OK);
  t = defaults(a);
  t.dz = a.dy;  // dz over dy, exactly
  EXPECT_EQ(back(t, &d), BNORM_OK);
  t = defaults(a);
  t.beta = nullptr;  // backward_ex's beta may be NULL
  EXPECT_EQ(back(t, &d), BNORM_OK);
}

// Overlap of 16-bit tensors is judged in 2-byte elements: an output that
// starts on the last element of an input (or a float output that covers its
// last two) overlaps it; one just past its end does not. Every rejected call
// leaves all bytes as they were. (Inputs may overlap each other: only
// outputs are checked against other buffers.)
TEST(Validation, SixteenBitAliasBoundaries) {
  constexpr int64_t kN = 2, kC = 3, kS = 6, kE = kN * kC * kS;  // kE even: floats stay aligned
  // Bytes: three 16-bit tensors of kE elements (x, then dy or spare room,
  // then an output), then 8 * kC floats of parameters.
  constexpr size_t kTensorBytes = 3 * kE * 2, kBytes = kTensorBytes + 8 * kC * 4;
  alignas(16) unsigned char arena[kBytes];
  for (bnorm_dtype dtype : {BNORM_DTYPE_BF16, BNORM_DTYPE_F16}) {
    for (bnorm_layout layout : {BNORM_LAYOUT_NCHW, BNORM_LAYOUT_NHWC}) {
      SCOPED_TRACE(testing::Message() << "dtype " << dtype << " layout " << layout);
      const bnorm_tensor_desc d{kN, kC, kS, layout, dtype};
      unsigned char* x = arena;  // element e at x + 2 e
      const auto at = [&](int64_t element) { return x + 2 * element; };
      const auto floats = [&](int64_t k) {
        return reinterpret_cast<float*>(arena + kTensorBytes + 4 * k);
      };
      float *beta = floats(kC), *mean = floats(2 * kC), *var = floats(3 * kC), *sm = floats(4 * kC);
      float *si = floats(5 * kC), *dg = floats(6 * kC), *db = floats(7 * kC);
      const auto reset = [&]() {
        for (int64_t e = 0; e < 3 * kE; ++e) {
          const uint16_t h = static_cast<uint16_t>(0x3C00 + e % 7);  // 1.0 and up in both
          std::memcpy(at(e), &h, 2);
        }
        for (int64_t k = 0; k < 8 * kC; ++k) {
          const float f = 1.0f + 0.25f * static_cast<float>(k % 5);
          std::memcpy(floats(k), &f, 4);
        }
      };
      const auto expect_rejected = [&](bnorm_status got, const char* what) {
        EXPECT_EQ(got, BNORM_ERR_ALIAS) << what;
      };
      // Training: y in the third region unless a case moves it; save_mean
      // over x's last two elements is an output over an input.
      const auto train = [&](void* y, float* save_mean) {
        return bnorm_forward_training(nullptr, &d, x, y, nullptr, beta, 1e-5f, 0.1f, nullptr,
                                      nullptr, save_mean, si);
      };
      const auto infer = [&](void* y) {
        return bnorm_forward_inference(nullptr, &d, x, y, nullptr, beta, mean, var, 1e-5f);
      };
      // dy = the second region, dx where given.
      const auto back = [&](void* dx, float* dgamma) {
        return bnorm_backward(nullptr, &d, x, at(kE), dx, nullptr, mean, si, dgamma, db);
      };
      reset();
      std::vector<unsigned char> before(arena, arena + kBytes);
      const auto unchanged = [&]() {
        EXPECT_EQ(std::memcmp(arena, before.data(), kBytes), 0) << "a byte changed on error";
      };
      expect_rejected(train(at(kE - 1), sm), "training: y on x's last element");
      unchanged();
      expect_rejected(train(at(2 * kE), reinterpret_cast<float*>(at(kE - 2))),
                      "training: save_mean over x's last two elements");
      unchanged();
      expect_rejected(infer(at(kE - 1)), "inference: y on x's last element");
      unchanged();
      expect_rejected(back(at(2 * kE - 1), dg), "backward: dx on dy's last element");
      unchanged();
      // (dx NULL: dgamma over dy's end overlaps nothing else.)
      expect_rejected(back(nullptr, reinterpret_cast<float*>(at(2 * kE - 2))),
                      "backward: dgamma over dy's last two elements");
      unchanged();
      // Just past the end: accepted.
      EXPECT_EQ(train(at(kE), sm), BNORM_OK);
      reset();
      EXPECT_EQ(train(at(2 * kE), reinterpret_cast<float*>(at(kE))), BNORM_OK);
      reset();
      EXPECT_EQ(infer(at(kE)), BNORM_OK);
      reset();
      EXPECT_EQ(infer(x), BNORM_OK);  // in place
      reset();
      EXPECT_EQ(back(nullptr, reinterpret_cast<float*>(at(2 * kE))), BNORM_OK);
      reset();
      EXPECT_EQ(back(at(kE), dg), BNORM_OK);  // dx == dy: in place
    }
  }
}

// ---- context and misc ----

TEST(Validation, Context) {
  bnorm_context* ctx = reinterpret_cast<bnorm_context*>(uintptr_t{0x1234});
  EXPECT_EQ(bnorm_context_create(-1, &ctx), BNORM_ERR_BAD_ARGUMENT);
  EXPECT_EQ(ctx, reinterpret_cast<bnorm_context*>(uintptr_t{0x1234}));
  EXPECT_EQ(bnorm_context_create(2, nullptr), BNORM_ERR_NULL_POINTER);
  ASSERT_EQ(bnorm_context_create(3, &ctx), BNORM_OK);
  EXPECT_EQ(bnorm_context_num_threads(ctx), 3);
  bnorm_context_destroy(ctx);
  bnorm_context_destroy(nullptr);
  EXPECT_GE(bnorm_context_num_threads(nullptr), 1);
  // Absurd thread counts are clamped, and the context works.
  for (int threads : {100000, std::numeric_limits<int>::max()}) {
    ASSERT_EQ(bnorm_context_create(threads, &ctx), BNORM_OK) << threads;
    EXPECT_GE(bnorm_context_num_threads(ctx), 256);
    EXPECT_LT(bnorm_context_num_threads(ctx), threads);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, y[8];
    const bnorm_tensor_desc d{2, 1, 4, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
    EXPECT_EQ(bnorm_forward_training(ctx, &d, x, y, nullptr, nullptr, 0.0f, 0.1f, nullptr, nullptr,
                                     nullptr, nullptr),
              BNORM_OK);
    bnorm_context_destroy(ctx);
  }
}

TEST(Validation, StatusStringsAndVersion) {
  for (int s = -3; s < 20; ++s) {
    const char* text = bnorm_status_string(static_cast<bnorm_status>(s));
    ASSERT_NE(text, nullptr);
    EXPECT_GT(std::strlen(text), 0u);
  }
  EXPECT_STREQ(bnorm_status_string(static_cast<bnorm_status>(99)), "unknown status");
  std::string v = bnorm_version_string();
  EXPECT_EQ(v, std::to_string(BNORM_VERSION_MAJOR) + "." + std::to_string(BNORM_VERSION_MINOR) +
                   "." + std::to_string(BNORM_VERSION_PATCH));
}

TEST(Validation, Targets) {
  ASSERT_GE(bnorm_target_count(), 1);
  EXPECT_EQ(bnorm_target_name(-1), nullptr);
  EXPECT_EQ(bnorm_target_name(bnorm_target_count()), nullptr);
  const std::string best = bnorm_target_name(0);
  const std::string active = bnorm_active_target();
  EXPECT_EQ(bnorm_set_target("no-such-isa"), BNORM_ERR_BAD_ARGUMENT);
  EXPECT_EQ(active, bnorm_active_target());
  // A target this build knows but cannot run here (AVX3_DL is never built by
  // default; AVX3 is missing on CPUs without AVX-512; another architecture's).
  const std::vector<std::string> runnable = TargetNames();
  for (const char* name : {"AVX3_DL", "AVX3", "AVX2", "SSE4", "SSSE3", "NEON", "sve", "SVE2",
                           "PPC8", "WASM", "RVV", "EMU128"}) {
    if (std::find(runnable.begin(), runnable.end(), name) != runnable.end()) continue;
    EXPECT_EQ(bnorm_set_target(name), BNORM_ERR_UNSUPPORTED) << name;
  }
  EXPECT_EQ(active, bnorm_active_target());
  const std::string last = bnorm_target_name(bnorm_target_count() - 1);
  std::string lower = last;
  for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  EXPECT_EQ(bnorm_set_target(lower.c_str()), BNORM_OK);
  EXPECT_EQ(last, bnorm_active_target());
  EXPECT_EQ(bnorm_set_target(""), BNORM_OK);
  EXPECT_EQ(active, bnorm_active_target());
  // Surrounding whitespace is ignored; inside a name, or alone, it is not.
  EXPECT_EQ(bnorm_set_target((" " + lower + "\t\n").c_str()), BNORM_OK);
  EXPECT_EQ(last, bnorm_active_target());
  for (const std::string& bad : {std::string(" "), last.substr(0, 1) + " " + last.substr(1)}) {
    EXPECT_EQ(bnorm_set_target(bad.c_str()), BNORM_ERR_BAD_ARGUMENT) << bad;
    EXPECT_EQ(last, bnorm_active_target());
  }
  EXPECT_EQ(bnorm_set_target(nullptr), BNORM_OK);
  EXPECT_EQ(active, bnorm_active_target());
  (void)best;
}

// c floats per channel array is the limit for the functions that take float
// per-channel arrays: c = 2^61 - 1 fits (2^63 - 4 bytes), even though c
// doubles would not (that limit is the split functions' only). The checks
// stop before any buffer is read.
TEST(Validation, HugeChannelCountIsAShapeOnlyWhereItOverflows) {
  const bnorm_tensor_desc d{1, (int64_t{1} << 61) - 1, 1, BNORM_LAYOUT_NCHW, BNORM_DTYPE_F32};
  float x = 0.0f, y = 0.0f;
  EXPECT_EQ(bnorm_forward_training(nullptr, &d, &x, &y, nullptr, nullptr, 1e-5f, 0.1f, nullptr,
                                   nullptr, nullptr, nullptr),
            BNORM_ERR_TOO_FEW_VALUES);
  bnorm_tensor_desc empty = d;
  empty.n = 0;
  double mean = 0.0, m2 = 0.0;
  EXPECT_EQ(bnorm_stats(nullptr, &empty, nullptr, &mean, &m2), BNORM_ERR_BAD_SHAPE);
}

}  // namespace
}  // namespace bnorm_test
