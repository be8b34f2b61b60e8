// JS class PastKeyValues: a prompt's key/value prefix for every layer, handed from the module that computed it (a PEFT
// adapter's encoder) to the base model's forward / generate, as transformers passes past_key_values.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/StringUtil.h>

#include "binding/objects.h"
#include "binding/worker.h"
#include "core/prefix_encoder.h"

namespace peft_node::binding {

Napi::Function PastKeyValuesWrap::Define(Napi::Env env) {
  return DefineClass(env, "PastKeyValues",
                     {StaticMethod<&PastKeyValuesWrap::FromPrefix>("fromPrefix"),
                      InstanceMethod<&PastKeyValuesWrap::Dims>("dims"),
                      InstanceMethod<&PastKeyValuesWrap::Grad>("grad"),
                      InstanceMethod<&PastKeyValuesWrap::Dispose>("dispose")});
}

PastKeyValuesWrap::PastKeyValuesWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PastKeyValuesWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw make_error(info.Env(), codes::kInvalidInput,
                     "PastKeyValues cannot be constructed directly; use a PEFT model's get_prompt() or PastKeyValues.from_prefix()");
  state_ = *info[0].As<Napi::External<std::shared_ptr<PastKeyValuesState>>>().Data();
  std::lock_guard<std::mutex> lock(state_->mu);
  dims_ = state_->values.sizes().vec();
}

Napi::Value PastKeyValuesWrap::New(Napi::Env env, std::shared_ptr<PastKeyValuesState> state) {
  auto* holder = new std::shared_ptr<PastKeyValuesState>(std::move(state));
  auto ext = Napi::External<std::shared_ptr<PastKeyValuesState>>::New(
      env, holder, [](Napi::Env, std::shared_ptr<PastKeyValuesState>* p) { delete p; });
  return env.GetInstanceData<AddonData>()->past_key_values_ctor.New({ext});
}

Napi::Value PastKeyValuesWrap::FromPrefix(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    const int64_t P = int_arg(info[1], "numVirtualTokens"), B = int_arg(info[2], "batch");
    if (P < 1 || B < 1) fail(codes::kInvalidInput, "numVirtualTokens and batch must be >= 1");
    if (!info[0].IsTypedArray()) fail(codes::kInvalidInput, "prefix must be a Float32Array or Float64Array");
    const int64_t n = static_cast<int64_t>(info[0].As<Napi::TypedArray>().ElementLength());
    if (n % P != 0) fail(codes::kShapeMismatch, "prefix holds " + std::to_string(n) + " values, not numVirtualTokens rows");
    const bool per_row = info[4].ToBoolean().Value();
    if (per_row && n % (B * P) != 0)
      fail(codes::kShapeMismatch, "per-row prefixes hold " + std::to_string(n) + " values, not batch x numVirtualTokens rows");
    auto state = std::make_shared<PastKeyValuesState>();
    const std::vector<int64_t> shape = per_row ? std::vector<int64_t>{B, P, n / (B * P)} : std::vector<int64_t>{P, n / P};
    state->leaf = float_tensor(info[0], shape, "prefix").requires_grad_(info[3].ToBoolean().Value());
    {
      c10::AutoGradMode grad(state->leaf.requires_grad());
      state->values = per_row ? state->leaf : prefix_rows(state->leaf, B, g_exact_mode.load());
    }
    return New(env, std::move(state));
  });
}

Napi::Value PastKeyValuesWrap::Dims(const Napi::CallbackInfo& info) { return shape_array(info.Env(), dims_); }

Napi::Value PastKeyValuesWrap::Grad(const Napi::CallbackInfo& info) {
  auto state = state_;
  auto grad = std::make_shared<at::Tensor>();
  return PromiseWorker::start(
      info.Env(), "peft_node.PastKeyValues.grad",
      [state, grad] {
        std::lock_guard<std::mutex> lock(state->mu);
        if (state->disposed) fail(codes::kDisposed, "these past_key_values were disposed");
        if (state->leaf.defined() && state->leaf.grad().defined()) *grad = state->leaf.grad().to(at::kCPU).contiguous();
      },
      [grad](Napi::Env env) -> Napi::Value {
        return grad->defined() ? to_typed_array(env, *grad, grad->scalar_type() == at::kDouble) : env.Null();
      });
}

// Frees the tensors and the autograd graph they hold (the adapter's activations) now, not at garbage collection.
Napi::Value PastKeyValuesWrap::Dispose(const Napi::CallbackInfo& info) {
  auto state = state_;
  return PromiseWorker::start(
      info.Env(), "peft_node.PastKeyValues.dispose",
      [state] {
        std::lock_guard<std::mutex> lock(state->mu);
        state->disposed = true;
        state->values = at::Tensor();
        state->leaf = at::Tensor();
        state->owner.reset();
      },
      nullptr);
}

std::shared_ptr<PastKeyValuesState> past_key_values_arg(Napi::Env env, const Napi::Value& v, int64_t batch,
                                                        const BloomConfig& config) {
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  AddonData* data = env.GetInstanceData<AddonData>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->past_key_values_ctor.Value()))
    fail(codes::kInvalidInput, "past_key_values must be a PastKeyValues (a PEFT model's get_prompt())");
  PastKeyValuesWrap* w = PastKeyValuesWrap::Unwrap(v.As<Napi::Object>());
  const std::vector<int64_t>& d = w->dims();
  const int64_t width = 2 * config.n_layer * config.hidden_size;
  if (d.size() != 3 || (d[0] != batch && d[0] != 1) || d[2] != width)
    fail(codes::kShapeMismatch, "past_key_values have shape " + c10::str(at::IntArrayRef(d)) + ", the model needs [" +
                                    std::to_string(batch) + " (or 1), num_virtual_tokens, " + std::to_string(width) +
                                    "] (2 · n_layer · hidden_size)");
  return w->state();
}

}  // namespace peft_node::binding
