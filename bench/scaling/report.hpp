// What lf-bench-scaling prints (the machine, one table per figure) and writes for plot.py (the
// same figures as JSON).
#pragma once

#include <string>
#include <vector>

#include "measure.hpp"
#include "options.hpp"

namespace lfbench::scaling {

struct Figures {
  std::vector<PublishFigures> publish;
  ReaderFigures readers;
  AdapterFigures adapters;
  std::vector<FlipRow> subscribers;
  std::string load_start, load_end;
  double run_s = 0;
};

// "AMD EPYC, 2 online CPUs, 23.4 GiB memory".
std::string machine();

void print_header(const Options &opt);
void print_tables(const Figures &f);
// Writes `f` as JSON to `path`; fails (throws) when it cannot.
void write_json(const Options &opt, const Figures &f, const std::string &path);

}  // namespace lfbench::scaling
