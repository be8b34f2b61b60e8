#include "core/checkpoint.h"

#include <algorithm>
#include <set>
#include <unordered_map>

#include "core/config.h"
#include "core/errors.h"
#include "core/json.h"
#include "core/safetensors.h"
#include "core/torch_pickle.h"

namespace peft_node {

namespace {

constexpr const char* kSafeWeights = "model.safetensors";
constexpr const char* kSafeIndex = "model.safetensors.index.json";
constexpr const char* kBinWeights = "pytorch_model.bin";
constexpr const char* kBinIndex = "pytorch_model.bin.index.json";

// pytorch_model.bin.index.json: {"weight_map": {tensor: shard file}}; only the tensors it lists are taken from each
// shard, as transformers does.
std::vector<std::pair<std::string, at::Tensor>> load_bin_shards(const std::string& dir, const std::string& index) {
  json::Value root = json::parse(read_text_file(index), index);
  const json::Value* wm = root.find("weight_map");
  if (!wm || !wm->is_object()) fail(codes::kJson, index + ": missing object 'weight_map'");
  std::vector<std::string> shards;
  std::unordered_map<std::string, std::string> shard_of;  // tensor -> shard
  for (const auto& [name, shard] : wm->as_object()) {
    if (!shard.is_string()) fail(codes::kJson, index + ": weight_map['" + name + "'] must be a string");
    const std::string& s = shard.as_string();
    if (s.empty() || s.find('/') != std::string::npos || s == "." || s == "..")
      fail(codes::kJson, index + ": shard name '" + s + "' must be a plain file name in the same directory");
    if (std::find(shards.begin(), shards.end(), s) == shards.end()) shards.push_back(s);
    shard_of[name] = s;
  }
  std::sort(shards.begin(), shards.end());  // transformers' order: shard files by name, tensors as each stores them
  std::vector<std::pair<std::string, at::Tensor>> out;
  std::set<std::string> found;
  for (const std::string& s : shards) {
    for (auto& [name, t] : load_torch_checkpoint(dir + "/" + s)) {
      auto it = shard_of.find(name);
      if (it == shard_of.end() || it->second != s || !found.insert(name).second) continue;
      out.emplace_back(name, std::move(t));
    }
  }
  for (const auto& [name, s] : shard_of)
    if (!found.count(name)) fail(codes::kWeightMissing, index + " lists '" + name + "' in " + s + ", but that shard does not hold it");
  return out;
}

}  // namespace

CheckpointLocation find_checkpoint(const std::string& dir) {
  const std::pair<CheckpointFormat, const char*> order[] = {{CheckpointFormat::Safetensors, kSafeWeights},
                                                            {CheckpointFormat::SafetensorsSharded, kSafeIndex},
                                                            {CheckpointFormat::PytorchBin, kBinWeights},
                                                            {CheckpointFormat::PytorchBinSharded, kBinIndex}};
  std::string looked;
  for (const auto& [format, name] : order) {
    const std::string file = dir + "/" + name;
    if (file_exists(file)) return {format, file};
    looked += (looked.empty() ? "" : format == CheckpointFormat::PytorchBinSharded ? " and " : ", ") + file;
  }
  fail(codes::kFileNotFound, "no weights found in " + dir + ": looked for " + looked);
}

const char* checkpoint_format_name(CheckpointFormat format) {
  switch (format) {
    case CheckpointFormat::Safetensors: return "safetensors";
    case CheckpointFormat::SafetensorsSharded: return "safetensors (sharded)";
    case CheckpointFormat::PytorchBin: return "pytorch_model.bin";
    case CheckpointFormat::PytorchBinSharded: return "pytorch_model.bin (sharded)";
  }
  return "?";
}

std::vector<std::pair<std::string, at::Tensor>> load_checkpoint_tensors(const std::string& dir) {
  return load_checkpoint_tensors(dir, find_checkpoint(dir));
}

std::vector<std::pair<std::string, at::Tensor>> load_checkpoint_tensors(const std::string& dir,
                                                                        const CheckpointLocation& where) {
  switch (where.format) {
    case CheckpointFormat::Safetensors:
    case CheckpointFormat::SafetensorsSharded: return load_safetensors_checkpoint(dir);
    case CheckpointFormat::PytorchBin: return load_torch_checkpoint(where.file);
    case CheckpointFormat::PytorchBinSharded: return load_bin_shards(dir, where.file);
  }
  fail(codes::kFileNotFound, "no weights found in " + dir);
}

std::string safetensors_dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return "F64";
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: fail(codes::kSafetensorsDtype, std::string("safetensors cannot hold dtype ") + c10::toString(dtype));
  }
}

}  // namespace peft_node
