// JS class Checkpoint: the tensors of a model directory's weights, whatever their format (load_checkpoint_tensors),
// for `peft-node convert`. data() hands out a tensor's bytes as a Buffer over the mapped file, so a multi-GB
// checkpoint streams to disk without a second copy in memory.
#pragma once
#include <napi.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Tensor.h>

namespace peft_node::binding {

struct CheckpointState {
  std::string format;  // checkpoint_format_name()
  std::string file;    // the weights file or shard index read
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::vector<int64_t> alias_of;  // per tensor: an earlier tensor with the same memory, dtype and shape, else -1
};

class CheckpointWrap : public Napi::ObjectWrap<CheckpointWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit CheckpointWrap(const Napi::CallbackInfo& info);

 private:
  static Napi::Value Open(const Napi::CallbackInfo& info);  // (dir) -> Promise<Checkpoint>
  Napi::Value Format(const Napi::CallbackInfo& info);
  Napi::Value File(const Napi::CallbackInfo& info);
  Napi::Value Entries(const Napi::CallbackInfo& info);  // [name, dtype, shape, byteLength, aliasOf][]
  Napi::Value Data(const Napi::CallbackInfo& info);     // (index, offset, length) -> Buffer
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  const CheckpointState& live() const;
  std::shared_ptr<CheckpointState> state_;
};

}  // namespace peft_node::binding
