// Safetensors reading: the file is mmapped (copy-on-write) and tensors are views over the mapping, so a checkpoint in
// the requested dtype loads without copying. Every header field is validated before any byte is touched.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace peft_node {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // offsets into the data section
};

class SafetensorsFile {
 public:
  // Opens and validates `path` (ERR_FILE_NOT_FOUND, ERR_SAFETENSORS_HEADER, ERR_SAFETENSORS_DTYPE,
  // ERR_SAFETENSORS_OFFSETS).
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::vector<std::pair<std::string, std::string>>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;

  // A CPU tensor of the file's dtype viewing the mapping (copied only when misaligned); it keeps the file mapped.
  at::Tensor tensor(const SafetensorsEntry& e) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::weak_ptr<SafetensorsFile> self_;
};

// All tensors of a checkpoint directory, as transformers finds them: model.safetensors, else the shards listed in
// model.safetensors.index.json. Names are as stored. ERR_FILE_NOT_FOUND names what was looked for.
std::vector<std::pair<std::string, at::Tensor>> load_safetensors_checkpoint(const std::string& dir);

at::ScalarType safetensors_dtype(const std::string& dtype, const std::string& where);

}  // namespace peft_node
