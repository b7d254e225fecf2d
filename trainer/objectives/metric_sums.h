// Sums of per-example metric values over a global batch, turned into means
// when the step is logged. Each metric has its own denominator (pairs, tokens,
// tokens × vocabulary), so a sum travels with its count; summing both across
// micro-batches and ranks gives global-batch means (docs/objectives.md §0).
#ifndef PREFOPT_TRAINER_OBJECTIVES_METRIC_SUMS_H_
#define PREFOPT_TRAINER_OBJECTIVES_METRIC_SUMS_H_

#include <map>
#include <string>
#include <vector>

namespace prefopt::objectives {

class MetricSums {
 public:
  void Add(const std::string& name, double value, double count = 1.0) {
    Entry& e = entries_[name];
    e.sum += value;
    e.count += count;
  }
  void Merge(const MetricSums& other) {
    for (const auto& [name, e] : other.entries_) Add(name, e.sum, e.count);
  }
  void Clear() { entries_.clear(); }
  // (sum, count) of every metric in name order, for summing across ranks;
  // SetFlattened takes such a vector back (same names, same order).
  std::vector<double> Flattened() const {
    std::vector<double> out;
    for (const auto& [name, e] : entries_) {
      out.push_back(e.sum);
      out.push_back(e.count);
    }
    return out;
  }
  void SetFlattened(const std::vector<double>& values) {
    size_t i = 0;
    for (auto& [name, e] : entries_) {
      e.sum = values[i++];
      e.count = values[i++];
    }
  }
  // How many values (their total count) `name` has; 0 when none was added.
  double Count(const std::string& name) const {
    auto it = entries_.find(name);
    return it == entries_.end() ? 0.0 : it->second.count;
  }
  // A fingerprint-friendly list of the names, to check that ranks agree.
  std::string JoinedNames() const {
    std::string out;
    for (const auto& [name, e] : entries_) out += name + ";";
    return out;
  }
  // name → sum / count, names in sorted order.
  std::map<std::string, double> Means() const {
    std::map<std::string, double> out;
    for (const auto& [name, e] : entries_) {
      out[name] = e.count > 0 ? e.sum / e.count : 0.0;
    }
    return out;
  }

 private:
  struct Entry {
    double sum = 0;
    double count = 0;
  };
  std::map<std::string, Entry> entries_;
};

}  // namespace prefopt::objectives

#endif  // PREFOPT_TRAINER_OBJECTIVES_METRIC_SUMS_H_
