// The native classes exposed to JS. Each wraps a shared state (the core object + a mutex) so that work queued on the
// libuv pool keeps it alive, calls on one object run one after another, and dispose() frees it deterministically.
#pragma once
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "binding/executor.h"
#include "core/adamw.h"
#include "core/bloom.h"
#include "core/prefix_encoder.h"
#include "core/process_group.h"

namespace peft_node::binding {

struct ModelState {
  std::mutex mu;
  std::unique_ptr<BloomModel> model;
  std::shared_ptr<Executor> executor = next_executor();  // the thread of this model's work
};

struct EncoderState {
  std::mutex mu;
  std::unique_ptr<PrefixEncoder> encoder;
  AdamW optimizer;  // state for the encoder's parameters, in their order
};

// Per-environment data: the constructors, to create instances from workers and to check `instanceof`.
// Immutable after creation, so the JS thread can read it without waiting for a running call.
struct ParamMeta {
  std::string name;
  std::vector<int64_t> shape;
  bool requires_grad;
};

Napi::Value param_meta_array(Napi::Env env, const std::vector<ParamMeta>& meta);
std::vector<ParamMeta> param_meta_of(const std::vector<std::pair<std::string, at::Tensor>>& params);

struct AddonData {
  Napi::FunctionReference model_ctor;
  Napi::FunctionReference encoder_ctor;
  Napi::FunctionReference checkpoint_ctor;
  Napi::FunctionReference process_group_ctor;
};

class BloomModelWrap : public Napi::ObjectWrap<BloomModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit BloomModelWrap(const Napi::CallbackInfo& info);

 private:
  static Napi::Value Load(const Napi::CallbackInfo& info);  // (dir, device, dtype) -> Promise<BloomModel>
  Napi::Value Config(const Napi::CallbackInfo& info);
  Napi::Value ParameterInfo(const Napi::CallbackInfo& info);
  Napi::Value GetParameter(const Napi::CallbackInfo& info);
  Napi::Value GetGrad(const Napi::CallbackInfo& info);
  Napi::Value SetParameter(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);  // generate_worker.cpp
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value IsDisposed(const Napi::CallbackInfo& info);
  Napi::Value NamesWithGrad(const Napi::CallbackInfo& info);

  std::shared_ptr<ModelState> state_;
  std::vector<ParamMeta> meta_;
  BloomConfig config_;
  std::string dtype_, device_;
  bool disposed_ = false;
};

class PrefixEncoderWrap : public Napi::ObjectWrap<PrefixEncoderWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit PrefixEncoderWrap(const Napi::CallbackInfo& info);
  const std::shared_ptr<EncoderState>& state() const { return state_; }

 private:
  static Napi::Value Create(const Napi::CallbackInfo& info);  // (options) -> Promise<PrefixEncoder>
  Napi::Value Options(const Napi::CallbackInfo& info);
  Napi::Value ParameterInfo(const Napi::CallbackInfo& info);
  Napi::Value GetParameter(const Napi::CallbackInfo& info);
  Napi::Value GetGrad(const Napi::CallbackInfo& info);
  Napi::Value SetParameter(const Napi::CallbackInfo& info);
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info);
  Napi::Value PromptEmbeddings(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value NamesWithGrad(const Napi::CallbackInfo& info);
  Napi::Value OptimizerStep(const Napi::CallbackInfo& info);
  Napi::Value GetOptimizerState(const Napi::CallbackInfo& info);
  Napi::Value SetOptimizerState(const Napi::CallbackInfo& info);

  std::shared_ptr<EncoderState> state_;
  std::vector<ParamMeta> meta_;
  PrefixEncoderOptions options_;
  bool disposed_ = false;
};

struct ProcessGroupState {
  std::mutex mu;  // one collective at a time, in call order (every rank must issue them in the same order)
  std::unique_ptr<ProcessGroup> group;
};

// JS class ProcessGroup: a c10d group this process joined (rendezvous from torchrun's variables, done in TS).
class ProcessGroupWrap : public Napi::ObjectWrap<ProcessGroupWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit ProcessGroupWrap(const Napi::CallbackInfo& info);

 private:
  static Napi::Value Create(const Napi::CallbackInfo& info);  // (options) -> Promise<ProcessGroup>
  Napi::Value Rank(const Napi::CallbackInfo& info);
  Napi::Value WorldSize(const Napi::CallbackInfo& info);
  // (PrefixEncoder, counters?: Float64Array) -> Promise<Float64Array>: the counters summed over ranks
  Napi::Value AverageGradients(const Napi::CallbackInfo& info);
  Napi::Value BroadcastParameters(const Napi::CallbackInfo& info);  // (PrefixEncoder) -> Promise<Float64Array (empty)>
  using EncoderOp = std::vector<double> (*)(ProcessGroup&, const std::vector<at::Tensor>&, const std::vector<double>&);
  Napi::Value WithEncoder(const Napi::CallbackInfo& info, const char* what, EncoderOp op);
  Napi::Value AllGather(const Napi::CallbackInfo& info);         // (Float64Array) -> Promise<Float64Array>
  Napi::Value AllGatherString(const Napi::CallbackInfo& info);   // (string) -> Promise<string[]>
  Napi::Value Barrier(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  std::shared_ptr<ProcessGroupState> state_;
  int rank_ = 0, world_size_ = 1;
  bool disposed_ = false;
};

}  // namespace peft_node::binding
