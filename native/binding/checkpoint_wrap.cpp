#include "binding/checkpoint_wrap.h"

#include <ATen/ATen.h>

#include <map>
#include <tuple>

#include "binding/objects.h"
#include "binding/worker.h"
#include "core/checkpoint.h"

namespace peft_node::binding {

Napi::Function CheckpointWrap::Define(Napi::Env env) {
  return DefineClass(env, "Checkpoint",
                     {StaticMethod<&CheckpointWrap::Open>("open"), InstanceMethod<&CheckpointWrap::Format>("format"),
                      InstanceMethod<&CheckpointWrap::File>("file"), InstanceMethod<&CheckpointWrap::Entries>("entries"),
                      InstanceMethod<&CheckpointWrap::Data>("data"), InstanceMethod<&CheckpointWrap::Dispose>("dispose")});
}

CheckpointWrap::CheckpointWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CheckpointWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw make_error(info.Env(), codes::kInvalidInput, "Checkpoint cannot be constructed directly; use Checkpoint.open()");
  state_ = *info[0].As<Napi::External<std::shared_ptr<CheckpointState>>>().Data();
}

Napi::Value CheckpointWrap::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string dir = string_arg(info[0], "model directory");
    auto state = std::make_shared<CheckpointState>();
    return PromiseWorker::start(
        env, "peft_node.Checkpoint.open",
        [=] {
          const CheckpointLocation where = find_checkpoint(dir);
          state->format = checkpoint_format_name(where.format);
          state->file = where.file;
          state->tensors = load_checkpoint_tensors(dir, where);
          // Tied weights (lm_head.weight = word_embeddings.weight) share one storage in a .bin; safetensors cannot
          // hold shared tensors, so convert writes the first name only, as save_pretrained does.
          std::map<std::tuple<const void*, at::ScalarType, std::vector<int64_t>>, int64_t> seen;
          for (size_t i = 0; i < state->tensors.size(); ++i) {
            const at::Tensor& t = state->tensors[i].second;
            int64_t alias = -1;
            if (t.numel() > 0) {
              auto [it, fresh] = seen.emplace(std::make_tuple(t.data_ptr(), t.scalar_type(), t.sizes().vec()),
                                              static_cast<int64_t>(i));
              if (!fresh) alias = it->second;
            }
            state->alias_of.push_back(alias);
          }
        },
        [state](Napi::Env env) -> Napi::Value {
          auto* holder = new std::shared_ptr<CheckpointState>(state);
          auto ext = Napi::External<std::shared_ptr<CheckpointState>>::New(
              env, holder, [](Napi::Env, std::shared_ptr<CheckpointState>* p) { delete p; });
          return env.GetInstanceData<AddonData>()->checkpoint_ctor.New({ext});
        });
  });
}

const CheckpointState& CheckpointWrap::live() const {
  if (!state_) fail(codes::kDisposed, "this checkpoint was disposed");
  return *state_;
}

Napi::Value CheckpointWrap::Format(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), live().format); });
}

Napi::Value CheckpointWrap::File(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), live().file); });
}

Napi::Value CheckpointWrap::Entries(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const CheckpointState& s = live();
    Napi::Array out = Napi::Array::New(env, s.tensors.size());
    for (size_t i = 0; i < s.tensors.size(); ++i) {
      const auto& [name, t] = s.tensors[i];
      Napi::Array row = Napi::Array::New(env, 5);
      row.Set(0u, name);
      row.Set(1u, safetensors_dtype_name(t.scalar_type()));
      row.Set(2u, shape_array(env, t.sizes()));
      row.Set(3u, static_cast<double>(t.nbytes()));
      row.Set(4u, static_cast<double>(s.alias_of[i]));
      out.Set(static_cast<uint32_t>(i), row);
    }
    return out;
  });
}

Napi::Value CheckpointWrap::Data(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const CheckpointState& s = live();
    const int64_t index = int_arg(info[0], "tensor index");
    const int64_t offset = int_arg(info[1], "offset");
    const int64_t length = int_arg(info[2], "length");
    if (index < 0 || static_cast<size_t>(index) >= s.tensors.size())
      fail(codes::kInvalidInput, "tensor index " + std::to_string(index) + " out of range");
    const at::Tensor& t = s.tensors[static_cast<size_t>(index)].second;
    const int64_t nbytes = static_cast<int64_t>(t.nbytes());
    if (offset < 0 || length < 0 || offset > nbytes || length > nbytes - offset)
      fail(codes::kInvalidInput, "byte range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                     ") outside the tensor's " + std::to_string(nbytes) + " bytes");
    if (!t.is_contiguous()) fail(codes::kInvalidInput, "tensor is not contiguous");  // the loaders guarantee it
    if (length == 0) return Napi::Buffer<uint8_t>::New(env, 0);
    auto* bytes = static_cast<uint8_t*>(t.data_ptr()) + offset;
    // The Buffer holds its own reference to the tensor (and so to the mapping): it outlives dispose() safely.
    auto* keep = new at::Tensor(t);
    return Napi::Buffer<uint8_t>::NewOrCopy(env, bytes, static_cast<size_t>(length),
                                            [](Napi::Env, uint8_t*, at::Tensor* k) { delete k; }, keep);
  });
}

Napi::Value CheckpointWrap::Dispose(const Napi::CallbackInfo& info) {
  state_.reset();  // Buffers still in use keep their tensors (and mappings) alive
  return info.Env().Undefined();
}

}  // namespace peft_node::binding
