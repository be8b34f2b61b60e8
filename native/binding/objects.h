// The native classes exposed to JS. Each wraps a shared state (the core object + a mutex) so that work queued on the
// libuv pool keeps it alive, calls on one object run one after another, and dispose() frees it deterministically.
#pragma once
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "binding/executor.h"
#include "binding/parameters.h"
#include "binding/worker.h"
#include "core/adamw.h"
#include "core/bloom.h"
#include "core/prefix_encoder.h"
#include "core/process_group.h"

namespace peft_node::binding {

// A native object that owns parameters (a model, an adapter's encoder). Its mutex guards them; calls on it run one
// after another. Work on parameters of several modules (an optimizer step, a gradient all-reduce, a forward whose
// past_key_values come from an encoder) takes every module's lock through lock_all (parameters.h).
struct ModuleState {
  virtual ~ModuleState() = default;
  std::mutex mu;
  // The named parameters; ERR_DISPOSED once freed. Call with `mu` held.
  virtual const std::vector<std::pair<std::string, at::Tensor>>& parameters() = 0;
  // The thread its work runs on (null: libuv's pool).
  virtual std::shared_ptr<Executor> executor() const { return nullptr; }
};

struct ModelState : ModuleState {
  std::unique_ptr<BloomModel> model;
  std::shared_ptr<Executor> thread = next_executor();  // the thread of this model's work
  ExecutionOptions execution;  // chosen at load (attn_implementation); `exact` follows set_exact_mode per call
  ExecutionOptions execution_options() const {
    ExecutionOptions options = execution;
    options.exact = g_exact_mode.load();
    return options;
  }
  const std::vector<std::pair<std::string, at::Tensor>>& parameters() override;
  std::shared_ptr<Executor> executor() const override { return thread; }
};

struct EncoderState : ModuleState {
  std::unique_ptr<PrefixEncoder> encoder;
  std::shared_ptr<Executor> thread = next_executor();  // its model's thread when made for one
  const std::vector<std::pair<std::string, at::Tensor>>& parameters() override;
  std::shared_ptr<Executor> executor() const override { return thread; }
};

// past_key_values: the [B, P, 2·L·D] key/value prefix of every layer in PEFT's flat layout, as an adapter computed it
// (its autograd graph leads back to `owner`'s parameters, whose lock a backward through it takes) or made from a raw
// prefix (`leaf`, whose gradient the caller reads back).
struct PastKeyValuesState {
  std::mutex mu;
  at::Tensor values;                    // [B, P, 2·L·D]
  at::Tensor leaf;                      // the raw prefix it was made from, or undefined
  std::shared_ptr<ModuleState> owner;   // the module whose parameters produced it, or null
  bool backward_done = false;           // a backward went through it: its graph is freed
  bool disposed = false;
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
  Napi::FunctionReference past_key_values_ctor;
  Napi::FunctionReference adamw_ctor;
};

class BloomModelWrap : public Napi::ObjectWrap<BloomModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit BloomModelWrap(const Napi::CallbackInfo& info);
  const std::shared_ptr<ModelState>& state() const { return state_; }

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
  Napi::Value GetPrompt(const Napi::CallbackInfo& info);  // (batch, requiresGrad) -> Promise<PastKeyValues>
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value NamesWithGrad(const Napi::CallbackInfo& info);

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
  // (parameters: [module, name][], counters?: Float64Array) -> Promise<Float64Array>: the counters summed over ranks
  Napi::Value AverageGradients(const Napi::CallbackInfo& info);
  Napi::Value BroadcastParameters(const Napi::CallbackInfo& info);  // (parameters) -> Promise<Float64Array (empty)>
  using ParamsOp = std::vector<double> (*)(ProcessGroup&, const std::vector<at::Tensor>&, const std::vector<double>&);
  Napi::Value WithParameters(const Napi::CallbackInfo& info, const char* what, ParamsOp op);
  Napi::Value AllGather(const Napi::CallbackInfo& info);         // (Float64Array) -> Promise<Float64Array>
  Napi::Value AllGatherString(const Napi::CallbackInfo& info);   // (string) -> Promise<string[]>
  Napi::Value Barrier(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  std::shared_ptr<ProcessGroupState> state_;
  int rank_ = 0, world_size_ = 1;
  bool disposed_ = false;
};

// JS class PastKeyValues: see PastKeyValuesState. Made by PrefixEncoder.getPrompt or PastKeyValues.fromPrefix; taken
// by BloomModel.forward / generate.
class PastKeyValuesWrap : public Napi::ObjectWrap<PastKeyValuesWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit PastKeyValuesWrap(const Napi::CallbackInfo& info);
  const std::shared_ptr<PastKeyValuesState>& state() const { return state_; }
  const std::vector<int64_t>& dims() const { return dims_; }
  static Napi::Value New(Napi::Env env, std::shared_ptr<PastKeyValuesState> state);

 private:
  // (prefix: Float32Array | Float64Array, numVirtualTokens, batch, requiresGrad, perRow) -> PastKeyValues: PEFT's
  // lookup of one raw [P, 2·L·D] prefix for every row, or with perRow each row's own [B, P, 2·L·D] (synchronous: a
  // copy of the values).
  static Napi::Value FromPrefix(const Napi::CallbackInfo& info);
  Napi::Value Dims(const Napi::CallbackInfo& info);  // [B, P, 2·L·D]
  Napi::Value Grad(const Napi::CallbackInfo& info);  // -> Promise<Float32Array | Float64Array | null>: the raw prefix's
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  std::shared_ptr<PastKeyValuesState> state_;
  std::vector<int64_t> dims_;
};

struct AdamWState {
  std::mutex mu;
  AdamW optimizer;
  std::vector<ParamRef> params;
  AdamWHyper hyper;  // betas, eps and per-parameter weight decay; lr comes with each step
};

// JS class AdamW: torch.optim.AdamW (single-tensor path) over a parameter list of any modules.
class AdamWWrap : public Napi::ObjectWrap<AdamWWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit AdamWWrap(const Napi::CallbackInfo& info);

 private:
  // (parameters: [module, name][], { beta1, beta2, eps, weightDecay: number[] }) -> AdamW
  static Napi::Value Create(const Napi::CallbackInfo& info);
  Napi::Value Step(const Napi::CallbackInfo& info);      // (lr) -> Promise<void>
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info);  // -> Promise<void> (set_to_none)
  Napi::Value GetState(const Napi::CallbackInfo& info);
  Napi::Value SetState(const Napi::CallbackInfo& info);

  std::shared_ptr<AdamWState> state_;
  std::vector<std::vector<int64_t>> shapes_;
};

// (parameters: [module, name][], maxNorm) -> Promise<number>: torch.nn.utils.clip_grad_norm_ (the pre-clip norm).
Napi::Value ClipGradNorm(const Napi::CallbackInfo& info);

// The pastKeyValues option of forward / generate: null when undefined; else a PastKeyValues object whose rows fit a
// batch of `batch` rows (B rows, or 1 to broadcast) of a model with `config` (ERR_SHAPE_MISMATCH otherwise).
std::shared_ptr<PastKeyValuesState> past_key_values_arg(Napi::Env env, const Napi::Value& v, int64_t batch,
                                                        const BloomConfig& config);

}  // namespace peft_node::binding
