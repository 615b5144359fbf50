// Writes the seed corpus of the control-message fuzzer (tests/fuzz/corpus/).
//
//   make_corpus [OUTPUT_DIR]   (default: the corpus folder of the source tree it was built from)
//
// Every file is one input of tests/fuzz/harness.hpp: one or more control messages separated by
// kSeparator, handled in order from an empty arena, each optionally led by kPeerTag and a digit
// that names its sender. Files named ok-* must be answered ok from the first message to the
// last (the replay test checks it, so the seeds keep reaching deep states as the protocol
// grows); err-* must get at least one error; crash-*, regress-* and other names are inputs the
// fuzzer found, kept as regression tests (this program neither writes nor removes them).
//
// Well-formed requests are built from the message declaration (ipc/messages.hpp), so the seeds
// follow the protocol as it changes. Only what that encoder never writes is written by hand
// with ipc::Encoder: malformed messages, and legal wire forms other than the canonical one (a
// dtype as its number, modules as one string, absent or nil optional fields).
// Not run at build time: regenerate after a protocol change and commit the result.
//
// The seeds are declared in corpus_ok.cpp and corpus_err.cpp, with the builders of
// corpus_builders.hpp; this file writes them.
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <string_view>

#include "corpus_builders.hpp"

#ifndef LF_FUZZ_CORPUS_DIR
#define LF_FUZZ_CORPUS_DIR "tests/fuzz/corpus"
#endif

using loraflip::fuzz::corpus::Seeds;

int main(int argc, char **argv) {
  if (argc > 2 || (argc == 2 && (std::string_view(argv[1]) == "-h" ||
                                 std::string_view(argv[1]) == "--help"))) {
    std::fprintf(argc > 2 ? stderr : stdout, "usage: make_corpus [OUTPUT_DIR]   (default: %s)\n",
                 LF_FUZZ_CORPUS_DIR);
    return argc > 2 ? 2 : 0;
  }
  const std::filesystem::path out = argc == 2 ? argv[1] : LF_FUZZ_CORPUS_DIR;
  try {
    Seeds seeds;
    loraflip::fuzz::corpus::ok_seeds(seeds);
    loraflip::fuzz::corpus::err_seeds(seeds);
    std::set<std::string> names;
    std::filesystem::create_directories(out);
    for (const auto &[name, input] : seeds) {
      if (!names.insert(name).second) {
        std::fprintf(stderr, "make_corpus: seed %s is declared twice\n", name.c_str());
        return 1;
      }
      const std::filesystem::path file = out / (name + ".msgpack");
      std::ofstream f(file, std::ios::binary | std::ios::trunc);
      const std::string bytes = input.bytes();
      f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (!f.flush()) {
        std::fprintf(stderr, "make_corpus: cannot write %s\n", file.c_str());
        return 1;
      }
    }
    std::printf("wrote %zu seeds to %s\n", seeds.size(), out.c_str());
  } catch (const std::exception &e) {
    std::fprintf(stderr, "make_corpus: %s\n", e.what());
    return 1;
  }
  return 0;
}
