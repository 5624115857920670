// The native bench's files: the job `hpu sim` writes (sim/job.py's Job) and the outcome it reads back
// (sim/job.py's Outcome), as plain structs. Kept apart from the bench so that the JSON library is
// compiled once per build folder, not once per configuration (sim/native.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct RowResult {
    std::vector<int64_t> acc, out;
    int64_t z_kept = 0, kept = 0;
};

struct JobFile {
    uint32_t gap_per_256 = 0, stall_per_256 = 0, gap_seed = 0, stall_seed = 0;   // sim/job.py's Options.host()
    bool gate_open = false;
    std::vector<std::vector<int64_t>> scores;               // per row, per key
    std::vector<std::vector<std::vector<int64_t>>> values;  // per row, per key, per dimension
    std::vector<RowResult> expected;
    std::vector<std::vector<int64_t>> blocks, routed;       // router logits per block; expected positions
};

struct OutcomeFile {
    uint64_t rows_checked = 0, mismatches = 0, hpu_cycles = 0, values_fetched = 0, routing_mismatches = 0;
    double wall_s = 0;
    int64_t first_mismatch = -1;                // the row, or -1
    std::vector<std::string> first_fields;      // its differing fields
    std::string stalled;                        // empty unless the HPU stalled
    std::vector<uint64_t> result_cycles;
    std::vector<RowResult> observed;
    std::vector<std::vector<int64_t>> routed;
};

// Both throw std::runtime_error with a message naming the file and what is wrong.
JobFile read_job(const std::string& path);
void write_outcome(const std::string& path, const JobFile& job, const OutcomeFile& outcome);
