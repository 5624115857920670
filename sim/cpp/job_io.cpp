// JSON for the native bench's job and outcome files (nlohmann/json, a Debian package).
#include "job_io.h"

#include <cstdio>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

using json = nlohmann::json;

namespace {

json to_json(const RowResult& r) {
    return json{{"acc", r.acc}, {"out", r.out}, {"z_kept", r.z_kept}, {"kept", r.kept}};
}

}  // namespace

JobFile read_job(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read the job " + path);
    try {
        const json job = json::parse(in);
        const json& host = job.at("host");
        JobFile out;
        out.gap_per_256 = host.at("gap_per_256").get<uint32_t>();
        out.stall_per_256 = host.at("stall_per_256").get<uint32_t>();
        out.gap_seed = host.at("gap_seed").get<uint32_t>();
        out.stall_seed = host.at("stall_seed").get<uint32_t>();
        out.gate_open = job.at("options").at("gate_open").get<bool>();
        for (const json& row : job.at("rows")) {
            out.scores.push_back(row.at("scores").get<std::vector<int64_t>>());
            out.values.push_back(row.at("values").get<std::vector<std::vector<int64_t>>>());
        }
        for (const json& e : job.at("expected"))
            out.expected.push_back({e.at("acc").get<std::vector<int64_t>>(), e.at("out").get<std::vector<int64_t>>(),
                                    e.at("z_kept").get<int64_t>(), e.at("kept").get<int64_t>()});
        out.blocks = job.at("blocks").get<std::vector<std::vector<int64_t>>>();
        out.routed = job.at("routed").get<std::vector<std::vector<int64_t>>>();
        return out;
    } catch (const json::exception& e) {
        throw std::runtime_error("the job " + path + " is not one `hpu sim` writes: " + e.what());
    }
}

void write_outcome(const std::string& path, const JobFile& job, const OutcomeFile& o) {
    json first = nullptr;
    if (o.first_mismatch >= 0) {
        const std::size_t row = static_cast<std::size_t>(o.first_mismatch);
        first = {{"row", row}, {"fields", o.first_fields}, {"n", job.scores[row].size()},
                 {"scores", job.scores[row]}, {"values", job.values[row]},
                 {"expected", to_json(job.expected[row])}, {"observed", to_json(o.observed[row])}};
    }
    json observed = json::array();
    for (const RowResult& r : o.observed) observed.push_back(to_json(r));
    const json outcome = {
        {"rows_checked", o.rows_checked}, {"mismatches", o.mismatches}, {"hpu_cycles", o.hpu_cycles},
        {"wall_s", o.wall_s}, {"values_fetched", o.values_fetched}, {"first_mismatch", first},
        {"stalled", o.stalled.empty() ? json(nullptr) : json(o.stalled)}, {"result_cycles", o.result_cycles},
        {"observed", observed}, {"routed", o.routed}, {"routing_mismatches", o.routing_mismatches}};
    // Written whole under a temporary name, then renamed: a reader never sees half an outcome.
    const std::string temp = path + ".partial";
    {
        std::ofstream out(temp);
        out << outcome.dump();
        if (!out) throw std::runtime_error("cannot write the outcome " + temp);
    }
    if (std::rename(temp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot write the outcome " + path);
}
