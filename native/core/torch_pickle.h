// pytorch_model.bin without Python: torch.save's zip format (torch >= 1.6) read by a restricted unpickler. It knows
// only the opcodes torch.save emits for a state dict and only the globals a state dict needs
// (collections.OrderedDict, torch._utils._rebuild_tensor_v2 / _rebuild_parameter, torch.<Dtype>Storage); any other
// global is ERR_UNSAFE_PICKLE naming it, at the moment it is read: nothing in the file is ever executed.
#pragma once
#include <ATen/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace peft_node {

// The state dict in `path`, in the pickle's order, as CPU tensors of the stored dtypes: views of the mmapped archive
// (a tensor that does not lie contiguously in its storage is copied). Tensors that share a storage in the file share
// memory here. Errors: ERR_FILE_NOT_FOUND, ERR_IO, ERR_ZIP, ERR_PICKLE, ERR_UNSAFE_PICKLE, and ERR_CHECKPOINT_FORMAT
// for the legacy (pre-zip) torch.save format, Git LFS pointers and other non-zip files.
std::vector<std::pair<std::string, at::Tensor>> load_torch_checkpoint(const std::string& path);

}  // namespace peft_node
