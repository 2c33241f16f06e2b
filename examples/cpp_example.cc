// Training step and inference with the C++ wrapper (bnorm/bnorm.hpp).
// Build: c++ -std=c++17 cpp_example.cc $(pkg-config --cflags --libs bnorm)
#include <cstdio>
#include <vector>

#include "bnorm/bnorm.hpp"

int main() {
  const int64_t n = 8, c = 16, spatial = 14 * 14;
  const bnorm::Desc desc(n, c, spatial, BNORM_LAYOUT_NHWC);
  std::vector<float> x(static_cast<size_t>(desc.elements())), y(x.size()), dy(x.size()),
      dx(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = 100.0f + static_cast<float>(i % 97) * 0.1f;
    dy[i] = static_cast<float>(i % 13) - 6.0f;
  }
  std::vector<float> gamma(c, 1.0f), beta(c, 0.0f), running_mean(c, 0.0f), running_var(c, 1.0f),
      save_mean(c), save_invstd(c), dgamma(c), dbeta(c);

  try {
    bnorm::Context ctx;  // all cores
    bnorm::forward_training(ctx, desc, x, y, {gamma, beta}, 1e-5f, 0.1f,
                            {running_mean, running_var}, {save_mean, save_invstd});
    bnorm::backward(ctx, desc, x, dy, dx, gamma, {save_mean, save_invstd}, {dgamma, dbeta});
    bnorm::forward_inference(ctx, desc, x, y, {gamma, beta}, running_mean, running_var, 1e-5f);
    std::printf("channel 0: mean %.4f invstd %.4f dgamma %.4f dbeta %.1f\n", save_mean[0],
                save_invstd[0], dgamma[0], dbeta[0]);
    bnorm::forward_training(ctx, desc, x, y, {gamma, beta}, -1.0f, 0.1f);  // bad eps
  } catch (const bnorm::Error& e) {
    std::printf("error as expected: %s (status %d)\n", e.what(), static_cast<int>(e.status()));
  }
  return 0;
}
