// The `deepshard` subcommands. Each takes the arguments after its name and
// returns the process exit code (0 ok, 1 runtime error, 2 bad usage).
#pragma once

#include <string>
#include <vector>

namespace deepshard {

int RunMakeModel(const std::vector<std::string>& args);
int RunGenerate(const std::vector<std::string>& args);
int RunPlan(const std::vector<std::string>& args);
int RunTokenize(const std::vector<std::string>& args);
int RunServe(const std::vector<std::string>& args);
int RunChat(const std::vector<std::string>& args);

}  // namespace deepshard
