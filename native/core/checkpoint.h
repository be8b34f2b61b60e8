// Where a model directory's weights are and how to read them, in transformers' order: model.safetensors,
// model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json (shards listed in the index).
#pragma once
#include <ATen/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace peft_node {

enum class CheckpointFormat { Safetensors, SafetensorsSharded, PytorchBin, PytorchBinSharded };

struct CheckpointLocation {
  CheckpointFormat format;
  std::string file;  // the weights file, or the index of the shards
};

// The first of the four files present in `dir`; ERR_FILE_NOT_FOUND names all four otherwise.
CheckpointLocation find_checkpoint(const std::string& dir);

// "safetensors", "safetensors (sharded)", "pytorch_model.bin", "pytorch_model.bin (sharded)".
const char* checkpoint_format_name(CheckpointFormat format);

// All tensors of `dir`'s weights as stored (names, dtypes), CPU, viewing the mapped files where possible.
std::vector<std::pair<std::string, at::Tensor>> load_checkpoint_tensors(const std::string& dir);
// The same for weights already located by find_checkpoint(dir).
std::vector<std::pair<std::string, at::Tensor>> load_checkpoint_tensors(const std::string& dir,
                                                                        const CheckpointLocation& where);

// The safetensors name of a dtype ("F32", "BF16", ...); ERR_SAFETENSORS_DTYPE for one safetensors cannot hold.
std::string safetensors_dtype_name(at::ScalarType dtype);

}  // namespace peft_node
