// A small command-line parser for subcommands: `--name value`, `--name=value`
// and boolean `--name`. Unknown flags, missing values and malformed numbers
// are errors that name the flag.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace deepshard {

class Flags {
 public:
  // `value_flags` take a value; `bool_flags` do not.
  static absl::StatusOr<Flags> Parse(const std::vector<std::string>& args,
                                     const std::set<std::string>& value_flags,
                                     const std::set<std::string>& bool_flags);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  absl::StatusOr<std::string> String(const std::string& name) const;  // required
  std::string String(const std::string& name, const std::string& def) const;
  absl::StatusOr<int64_t> Int(const std::string& name, int64_t def) const;
  absl::StatusOr<int64_t> Int(const std::string& name) const;  // required
  absl::StatusOr<double> Double(const std::string& name, double def) const;
  // Comma-separated integers, e.g. "0,5,17".
  absl::StatusOr<std::vector<int32_t>> IntList(const std::string& name) const;
  bool Bool(const std::string& name) const { return Has(name); }

 private:
  std::map<std::string, std::string> values_;
};

}  // namespace deepshard
