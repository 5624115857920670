// Native Verilator bench for the HPU: the C++ twin of sim/hdl/hpu_harness.v plus sim/hpu_tb.py.
//
// It reads the job file that `hpu sim` writes for the cocotb bench (rows, the golden model's results,
// router logits, gaps, back-pressure), owns the clock and reset, plays the host on the HPU's streams,
// checks every row bit for bit and writes the same outcome file. The host's behaviour is the Verilog
// harness's, cycle for cycle: the same handshakes, the same xorshift idle gaps and stalls, the same
// payloads on idle cycles (its rings hold what the testbench loaded), so a job gives the same results,
// result cycles and cycle count under both benches.
//
//   hpu_native JOB.json OUTCOME.json STALL_CYCLES_PER_ROW [--waves PATH] [--progress]
//
// layout.h, written beside this file by sim/native.py for one configuration, holds the payload
// layouts (from hpu/layouts.py) and the Verilog harness's ring depths.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "Vhpu.h"
#include "job_io.h"
#include "verilated.h"
#if defined(HPU_WAVES_FST)
#include "verilated_fst_c.h"
using Waves = VerilatedFstC;
#elif defined(HPU_WAVES_VCD)
#include "verilated_vcd_c.h"
using Waves = VerilatedVcdC;
#endif

// A field of a payload: `width` bits from bit `offset`, two's complement when `is_signed`.
struct Field {
    int offset, width;
    bool is_signed;
};

#include "layout.h"

// Verilator spells the Verilog name `scores__payload` as `scores___05Fpayload`.
#define PORT(stream, part) stream##___05F##part

namespace {

constexpr int FIFO_DEPTH = 16;     // the Verilog harness's row-length and request FIFOs
constexpr uint64_t HALF_PERIOD = 5000;   // ps: the harness's `always #5` under `timescale 1ns/1ps`

// A payload as 32-bit words, least significant first: Verilator's layout of wide ports.
struct Bits {
    std::vector<uint32_t> w;
    explicit Bits(int width = 1) : w((width + 31) / 32, 0) {}

    void put(int offset, int width, int64_t value) {
        for (int i = 0; i < width; ++i) {
            const int b = offset + i;
            const uint32_t bit = static_cast<uint32_t>((static_cast<uint64_t>(value) >> i) & 1u);
            w[b / 32] = (w[b / 32] & ~(1u << (b % 32))) | (bit << (b % 32));
        }
    }
    void put(const Field& f, int64_t value, int index = 0) { put(f.offset + index * f.width, f.width, value); }

    int64_t get(const Field& f, int index = 0) const {
        const int offset = f.offset + index * f.width;
        uint64_t value = 0;
        for (int i = 0; i < f.width; ++i) {
            const int b = offset + i;
            value |= static_cast<uint64_t>((w[b / 32] >> (b % 32)) & 1u) << i;
        }
        if (f.is_signed && f.width < 64 && ((value >> (f.width - 1)) & 1u)) value -= uint64_t{1} << f.width;
        return static_cast<int64_t>(value);
    }
};

// Ports of up to 64 bits are integers, wider ones VlWide word arrays.
template <typename T>
void drive(T& port, const Bits& b) {
    uint64_t v = b.w[0];
    if (b.w.size() > 1) v |= static_cast<uint64_t>(b.w[1]) << 32;
    port = static_cast<T>(v);
}
template <std::size_t N>
void drive(VlWide<N>& port, const Bits& b) {
    for (std::size_t i = 0; i < N; ++i) port[i] = b.w[i];
}
template <typename T>
Bits sample(const T& port, int width) {
    Bits b(width);
    const uint64_t v = port;
    b.w[0] = static_cast<uint32_t>(v);
    if (b.w.size() > 1) b.w[1] = static_cast<uint32_t>(v >> 32);
    return b;
}
template <std::size_t N>
Bits sample(const VlWide<N>& port, int width) {
    Bits b(width);
    for (std::size_t i = 0; i < N; ++i) b.w[i] = port[i];
    return b;
}

uint32_t xorshift(uint32_t x) {
    x ^= x << 13;
    x ^= x >> 17;
    return x ^ (x << 5);
}

// A ring of the Verilog harness as the testbench fills it: word i of the run at i mod depth, every word
// loaded before the HPU reaches it (the testbench keeps a quarter of the ring ahead). Past the last
// word a slot still holds the word a ring's length earlier, or its initial zero.
struct Ring {
    std::vector<Bits> words;
    int depth;
    Bits zero;
    Ring(int depth, int width) : depth(depth), zero(width) {}
    const Bits& at(uint64_t i) const {
        if (i < words.size()) return words[i];
        if (i >= static_cast<uint64_t>(depth)) return at(i - depth);
        return zero;
    }
};

int fail(const std::string& message) {
    std::cerr << "hpu_native: " << message << "\n";
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) return fail("usage: hpu_native JOB.json OUTCOME.json STALL_CYCLES_PER_ROW [--waves PATH] [--progress]");
    const std::string job_path = argv[1], outcome_path = argv[2];
    const uint64_t stall_per_row = std::stoull(argv[3]);
    std::string waves_path;
    bool progress = false;
    for (int i = 4; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--waves" && i + 1 < argc) waves_path = argv[++i];
        else if (arg == "--progress") progress = true;
        else return fail("unknown argument " + arg);
    }

    JobFile job;
    try {
        job = read_job(job_path);
    } catch (const std::runtime_error& e) {
        return fail(e.what());
    }

    // The host's words, packed as sim/packing.py packs them for the cocotb bench.
    Ring keys(KEY_DEPTH, SCORE_WIDTH), values(KEY_DEPTH, VALUE_WIDTH), logits(LOGIT_DEPTH, LOGIT_WIDTH);
    for (std::size_t r = 0; r < job.scores.size(); ++r) {
        const std::vector<int64_t>& scores = job.scores[r];
        for (std::size_t j = 0; j < scores.size(); ++j) {
            Bits s(SCORE_WIDTH);
            s.put(SCORE_SCORE, scores[j]);
            s.put(SCORE_LAST, j + 1 == scores.size());
            keys.words.push_back(s);
            Bits v(VALUE_WIDTH);
            for (int d = 0; d < HEAD_DIM; ++d) v.put(VALUE_ELEM, job.values[r][j][d], d);
            values.words.push_back(v);
        }
    }
    for (const std::vector<int64_t>& block : job.blocks) {
        for (std::size_t t = 0; t < block.size(); ++t) {
            Bits l(LOGIT_WIDTH);
            l.put(LOGIT_LOGIT, block[t]);
            l.put(LOGIT_LAST, t + 1 == block.size());
            logits.words.push_back(l);
        }
    }
    const std::vector<RowResult>& expected = job.expected;

    auto context = std::make_unique<VerilatedContext>();
    context->commandArgs(1, argv);
#if defined(HPU_WAVES_FST) || defined(HPU_WAVES_VCD)
    context->traceEverOn(true);
#endif
    auto dut = std::make_unique<Vhpu>(context.get(), "hpu");
#if defined(HPU_WAVES_FST) || defined(HPU_WAVES_VCD)
    std::unique_ptr<Waves> waves;
    if (!waves_path.empty()) {
        waves = std::make_unique<Waves>();
        dut->trace(waves.get(), 99);
        waves->open(waves_path.c_str());
    }
#else
    if (!waves_path.empty()) return fail("this build traces nothing: build it with waves to write " + waves_path);
#endif

    // The harness's state: what it has sent, the rows whose scores went out (their lengths, for the
    // request side), the requests taken but not answered, and the rings the testbench drains.
    uint64_t keys_sent = 0, row_count = 0, row_base = 0, values_sent = 0, logits_sent = 0;
    uint32_t row_len[FIFO_DEPTH] = {}, len_head = 0, len_tail = 0;
    uint64_t asked[FIFO_DEPTH] = {};
    uint32_t ask_head = 0, ask_tail = 0;   // one bit wider than the FIFO, as in the Verilog
    uint32_t gap_rng = 1, stall_rng = 1;
    uint64_t done_cycle = 0;

    OutcomeFile outcome;
    std::vector<uint64_t>& result_cycles = outcome.result_cycles;
    std::vector<std::vector<int64_t>>& got_routed = outcome.routed;
    got_routed.emplace_back();
    bool dumping = false;

    // One clock cycle: the harness's inputs from its state, the falling and rising edges, then the
    // handshakes of the cycle (sampled before the edge) update the state as the Verilog's
    // nonblocking assignments do.
    auto cycle = [&](bool rst) {
        // The testbench loads the rings when reset ends: nothing is offered before.
        const bool keys_valid = !rst && keys_sent < keys.words.size() && !((gap_rng & 0xff) < job.gap_per_256);
        const bool values_valid = ask_tail != ask_head && !(((gap_rng >> 8) & 0xff) < job.gap_per_256);
        const bool logits_valid = !rst && logits_sent < logits.words.size() && !(((gap_rng >> 16) & 0xff) < job.gap_per_256);
        const bool requests_ready = ((ask_tail - ask_head) & (2 * FIFO_DEPTH - 1)) < FIFO_DEPTH;
        const bool results_ready = !((stall_rng & 0xff) < job.stall_per_256);
        const bool routed_ready = !(((stall_rng >> 8) & 0xff) < job.stall_per_256);
        dut->rst = rst;
        dut->gate_open = job.gate_open;
        drive(dut->PORT(scores, payload), keys.at(keys_sent));
        dut->PORT(scores, valid) = keys_valid;
        drive(dut->PORT(values, payload), values.at(asked[ask_head % FIFO_DEPTH]));
        dut->PORT(values, valid) = values_valid;
        drive(dut->PORT(logits, payload), logits.at(logits_sent));
        dut->PORT(logits, valid) = logits_valid;
        dut->PORT(requests, ready) = requests_ready;
        dut->PORT(results, ready) = results_ready;
        dut->PORT(routed, ready) = routed_ready;
        dut->clk = 0;
        dut->eval();
        const bool key_taken = keys_valid && dut->PORT(scores, ready);
        const bool request_taken = dut->PORT(requests, valid) && requests_ready;
        const bool value_taken = values_valid && dut->PORT(values, ready);
        const bool result_taken = dut->PORT(results, valid) && results_ready;
        const bool logit_taken = logits_valid && dut->PORT(logits, ready);
        const bool routed_taken = dut->PORT(routed, valid) && routed_ready;
        const Bits request = sample(dut->PORT(requests, payload), REQUEST_WIDTH);
        const Bits result = result_taken ? sample(dut->PORT(results, payload), RESULT_WIDTH) : Bits();
        const Bits position = routed_taken ? sample(dut->PORT(routed, payload), ROUTED_WIDTH) : Bits();
        const uint64_t cycles = dut->cycles;
#if defined(HPU_WAVES_FST) || defined(HPU_WAVES_VCD)
        if (dumping) waves->dump(context->time());
#endif
        context->timeInc(HALF_PERIOD);
        dut->clk = 1;
        dut->eval();
#if defined(HPU_WAVES_FST) || defined(HPU_WAVES_VCD)
        if (dumping) waves->dump(context->time());
#endif
        context->timeInc(HALF_PERIOD);

        if (rst) {
            gap_rng = job.gap_seed | 1;
            stall_rng = job.stall_seed | 1;
        } else {
            if (job.gap_per_256) gap_rng = xorshift(gap_rng);
            if (job.stall_per_256) stall_rng = xorshift(stall_rng);
        }
        if (key_taken) {
            ++row_count;
            if (keys.words[keys_sent].get(SCORE_LAST)) {
                row_len[len_tail] = static_cast<uint32_t>(row_count);
                len_tail = (len_tail + 1) % FIFO_DEPTH;
                row_count = 0;
            }
            ++keys_sent;
        }
        if (request_taken) {
            asked[ask_tail % FIFO_DEPTH] = row_base + request.get(REQUEST_INDEX);
            ask_tail = (ask_tail + 1) % (2 * FIFO_DEPTH);
            if (request.get(REQUEST_LAST)) {
                row_base += row_len[len_head];
                len_head = (len_head + 1) % FIFO_DEPTH;
            }
        }
        if (value_taken) {
            ask_head = (ask_head + 1) % (2 * FIFO_DEPTH);
            ++values_sent;
        }
        if (result_taken) {
            RowResult got;
            got.acc.resize(HEAD_DIM);
            got.out.resize(HEAD_DIM);
            for (int d = 0; d < HEAD_DIM; ++d) {
                got.acc[d] = result.get(RESULT_ACC, d);
                got.out[d] = result.get(RESULT_OUT, d);
            }
            got.z_kept = result.get(RESULT_Z_KEPT);
            got.kept = result.get(RESULT_KEPT);
            const std::size_t index = result_cycles.size();
            result_cycles.push_back(cycles);
            if (index < expected.size()) {
                const RowResult& e = expected[index];
                std::vector<std::string> fields;
                if (got.acc != e.acc) fields.push_back("acc");
                if (got.out != e.out) fields.push_back("out");
                if (got.z_kept != e.z_kept) fields.push_back("z_kept");
                if (got.kept != e.kept) fields.push_back("kept");
                if (!fields.empty() && outcome.mismatches++ == 0) {
                    outcome.first_mismatch = static_cast<int64_t>(index);
                    outcome.first_fields = fields;
                }
            }
            outcome.observed.push_back(std::move(got));
        }
        if (logit_taken) ++logits_sent;
        if (routed_taken) {
            got_routed.back().push_back(position.get(ROUTED_POSITION));
            if (position.get(ROUTED_LAST)) got_routed.emplace_back();
        }
        if (result_taken || routed_taken) done_cycle = cycles + 1;
    };

    // Reset: three cycles, as the cocotb bench pulses it; the HPU's `cycles` counts from its end.
    for (int i = 0; i < 3; ++i) cycle(true);
    const uint64_t start_cycle = dut->cycles;
    dumping = static_cast<bool>(waves_path.size());

    const std::size_t blocks_expected = job.blocks.size();
    auto finished = [&] { return result_cycles.size() >= expected.size() && got_routed.size() > blocks_expected; };
    std::string stalled;
    uint64_t quiet = 0, seen = 0, last_report = 0;
    const auto start_wall = std::chrono::steady_clock::now();
    while (!finished()) {
        cycle(false);
        const uint64_t now_seen = result_cycles.size() + got_routed.size();
        quiet = now_seen == seen ? quiet + 1 : 0;
        seen = now_seen;
        const uint64_t remaining = expected.size() - std::min(expected.size(), result_cycles.size());
        if (quiet > stall_per_row * (remaining + 4)) {
            stalled = "no result within " + std::to_string(stall_per_row * (remaining + 4)) + " cycles: " +
                      std::to_string(result_cycles.size()) + " of " + std::to_string(expected.size()) +
                      " rows done, " + std::to_string(keys_sent) + " of " + std::to_string(keys.words.size()) +
                      " keys taken, " + std::to_string(got_routed.size() - 1) + " of " +
                      std::to_string(blocks_expected) + " blocks routed";
            break;
        }
        if (progress && result_cycles.size() - last_report >= std::max<std::size_t>(1, expected.size() / 20)) {
            last_report = result_cycles.size();
            std::cerr << "\r  rows " << result_cycles.size() << "/" << expected.size() << "  mismatches " << outcome.mismatches
                      << std::flush;
        }
    }
    // One more cycle in the dump, as the Verilog harness's dump closes on the edge after the last result.
    cycle(false);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_wall).count();
    if (progress) std::cerr << "\n";
#if defined(HPU_WAVES_FST) || defined(HPU_WAVES_VCD)
    if (waves) waves->close();
#endif
    dut->final();

    got_routed.pop_back();   // the list opened after the last block's final position
    const std::vector<std::vector<int64_t>>& want_routed = job.routed;
    for (std::size_t b = 0; b < std::min(got_routed.size(), want_routed.size()); ++b)
        outcome.routing_mismatches += got_routed[b] != want_routed[b];
    outcome.routing_mismatches += got_routed.size() > want_routed.size() ? got_routed.size() - want_routed.size()
                                                                         : want_routed.size() - got_routed.size();
    outcome.rows_checked = result_cycles.size();
    outcome.hpu_cycles = done_cycle > start_cycle ? done_cycle - start_cycle : 0;
    outcome.wall_s = wall;
    outcome.values_fetched = values_sent;
    outcome.stalled = stalled;
    try {
        write_outcome(outcome_path, job, outcome);
    } catch (const std::runtime_error& e) {
        return fail(e.what());
    }
    return 0;
}
