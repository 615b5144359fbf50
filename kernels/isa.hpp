// The run-time choice among instruction-set variants of a set of CPU kernels, shared by the
// commit checks (validate.cpp) and the LoRA kernels (lora/lora_cpu.cpp). Each of them keeps its
// own table, its own CPU feature checks and its own environment variable; only the walk over the
// table is here, so that both read a name, and fall back from it, the same way.
//
// Include this only from those drivers, which are compiled with the baseline flags, never from a
// kernel unit: these are templates, and validate_isa.hpp says why inline code must stay out of
// the units built with wider -m flags.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace loraflip::kernels {

// One row of a variant table. Kernels has a `name` member: the name the variant is chosen by and
// reported as. Tables list the best variant first and end with the baseline, which runs
// everywhere.
template <class Kernels>
struct IsaVariant {
  const Kernels &(*kernels)();
  bool (*supported)();  // this CPU (and OS) runs it
};

// The kernels of the variant called `name`, or null when the table lacks it or this CPU cannot
// run it (callers treat both alike).
template <class Kernels, std::size_t N>
const Kernels *runnable_isa(const IsaVariant<Kernels> (&variants)[N], const char *name) {
  for (const IsaVariant<Kernels> &v : variants)
    if (std::strcmp(v.kernels().name, name) == 0) return v.supported() ? &v.kernels() : nullptr;
  return nullptr;
}

// The variant the environment variable `env_var` names when it is runnable, else the best one
// this CPU runs. A name that is unknown, not runnable here, or empty is ignored rather than an
// error: the variable is for comparing variants, and the best one is always a correct answer.
template <class Kernels, std::size_t N>
const Kernels &choose_isa(const IsaVariant<Kernels> (&variants)[N], const char *env_var) {
  if (const char *want = std::getenv(env_var); want != nullptr)
    if (const Kernels *k = runnable_isa(variants, want); k != nullptr) return *k;
  for (const IsaVariant<Kernels> &v : variants)
    if (v.supported()) return v.kernels();
  return variants[N - 1].kernels();  // the baseline
}

// The table as the public {name, supported} list (Out is the caller's struct of those two).
template <class Out, class Kernels, std::size_t N>
std::vector<Out> list_isa_variants(const IsaVariant<Kernels> (&variants)[N]) {
  std::vector<Out> out;
  for (const IsaVariant<Kernels> &v : variants) out.push_back({v.kernels().name, v.supported()});
  return out;
}

}  // namespace loraflip::kernels
