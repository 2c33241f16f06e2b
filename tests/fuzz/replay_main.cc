// Replays fuzz inputs through the fuzz target's checks without libFuzzer, so
// the seed corpus (tests/fuzz/corpus) runs as a regression test in every
// build, GCC's included:
//   fuzz_corpus_replay FILE_OR_DIRECTORY...
// Each file is one input (a directory: each regular file in it, in name
// order). A violation aborts inside the target with its diagnostic, as under
// libFuzzer; an unreadable argument exits 2.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool Replay(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return false;
  const std::vector<char> bytes{std::istreambuf_iterator<char>(in),
                                std::istreambuf_iterator<char>()};
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  size_t replayed = 0;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    std::error_code ec;
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(arg, ec)) {
      for (const auto& entry : std::filesystem::directory_iterator(arg, ec)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(arg);
    }
    if (ec) {
      std::fprintf(stderr, "fuzz_corpus_replay: cannot read %s\n", argv[i]);
      return 2;
    }
    for (const auto& f : files) {
      if (!Replay(f)) {
        std::fprintf(stderr, "fuzz_corpus_replay: cannot read %s\n", f.c_str());
        return 2;
      }
      ++replayed;
    }
  }
  if (replayed == 0) {
    std::fprintf(stderr, "fuzz_corpus_replay: no input\n");
    return 2;
  }
  std::printf("fuzz_corpus_replay: %zu inputs, no failure\n", replayed);
  return 0;
}
