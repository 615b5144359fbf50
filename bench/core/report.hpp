// What lf-bench-core prints: the run's header, one table per figure, and the verdict on each
// target of design.md ("Performance targets").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "acquire.hpp"
#include "options.hpp"
#include "publish.hpp"

namespace lfbench::core {

void print_run_header(const Options &opt, const std::string &instance, uint64_t arena_mib);

void print_publish_table(const Options &opt, const std::vector<PublishFigures> &rows);
void print_flip_table(const Options &opt, const FlipFigures &flip);
void print_acquire_table(const Options &opt, const Repetitions &reps, const Stats &floor,
                         const AcquireFigures &one, const AcquireFigures &many);

void print_targets(const Options &opt, const std::vector<PublishFigures> &rows,
                   const FlipFigures &flip, const Stats &floor, const AcquireFigures &one,
                   const AcquireFigures &many);

}  // namespace lfbench::core
