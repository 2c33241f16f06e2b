// The shapes every entry point is tested on, and the (target, shape) grid.
#ifndef BNORM_TESTS_CASES_H_
#define BNORM_TESTS_CASES_H_

#include <ostream>
#include <string>
#include <vector>

#include "test_support.h"

namespace bnorm_test {

struct TargetShape {
  std::string target;
  Shape shape;
};

inline std::vector<Shape> TestShapes() {
  const std::vector<std::vector<int64_t>> dims = {
      {1, 1, 2},     {2, 1, 1},     {1, 3, 2},    {2, 5, 1},   {7, 1, 9},    {3, 7, 221},
      {4, 64, 49},   {2, 16, 1},    {33, 17, 1},  {5, 24, 37}, {3, 1030, 5}, {1, 2049, 3},
      {2, 3, 40000}, {1, 2, 70001}, {600, 3, 61}, {2, 8, 19},
  };
  std::vector<Shape> shapes;
  for (const auto& d : dims) {
    for (bnorm_layout layout : {BNORM_LAYOUT_NCHW, BNORM_LAYOUT_NHWC}) {
      shapes.push_back(Shape{d[0], d[1], d[2], layout});
    }
  }
  return shapes;
}

inline std::vector<TargetShape> TargetShapeGrid() {
  std::vector<TargetShape> grid;
  for (const std::string& t : TargetNames()) {
    for (const Shape& s : TestShapes()) grid.push_back(TargetShape{t, s});
  }
  return grid;
}

inline void PrintTo(const TargetShape& t, std::ostream* os) {
  *os << t.target << "_" << t.shape.Name();
}

inline std::string TargetShapeName(const testing::TestParamInfo<TargetShape>& info) {
  return info.param.target + "_" + info.param.shape.Name();
}

}  // namespace bnorm_test

#endif  // BNORM_TESTS_CASES_H_
