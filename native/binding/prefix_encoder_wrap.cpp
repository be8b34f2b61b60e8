// JS class PrefixEncoder: the trainable store of a PEFT prefix (embedding, optional MLP). Its parameters live in
// native memory; JS reads and writes them through Promise-returning calls, and get_prompt hands its output to the
// base model as past_key_values. Optimizers and process groups reach its parameters through parameter lists.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "binding/objects.h"
#include "binding/worker.h"

namespace peft_node::binding {

namespace {

PrefixEncoder& live(EncoderState& s) {
  if (!s.encoder) fail(codes::kDisposed, "this prefix encoder was disposed");
  return *s.encoder;
}
PrefixEncoder& live(const std::shared_ptr<EncoderState>& s) { return live(*s); }

int64_t opt_int(const Napi::Object& o, const char* key, int64_t fallback) {
  Napi::Value v = o.Get(key);
  return v.IsUndefined() || v.IsNull() ? fallback : int_arg(v, key);
}

bool opt_bool(const Napi::Object& o, const char* key) { return o.Get(key).ToBoolean().Value(); }

}  // namespace

Napi::Function PrefixEncoderWrap::Define(Napi::Env env) {
  return DefineClass(env, "PrefixEncoder",
                     {StaticMethod<&PrefixEncoderWrap::Create>("create"),
                      InstanceMethod<&PrefixEncoderWrap::Options>("options"),
                      InstanceMethod<&PrefixEncoderWrap::ParameterInfo>("parameterInfo"),
                      InstanceMethod<&PrefixEncoderWrap::GetParameter>("getParameter"),
                      InstanceMethod<&PrefixEncoderWrap::GetGrad>("getGrad"),
                      InstanceMethod<&PrefixEncoderWrap::SetParameter>("setParameter"),
                      InstanceMethod<&PrefixEncoderWrap::ZeroGrad>("zeroGrad"),
                      InstanceMethod<&PrefixEncoderWrap::PromptEmbeddings>("promptEmbeddings"),
                      InstanceMethod<&PrefixEncoderWrap::GetPrompt>("getPrompt"),
                      InstanceMethod<&PrefixEncoderWrap::Dispose>("dispose"),
                      InstanceMethod<&PrefixEncoderWrap::NamesWithGrad>("namesWithGrad")});
}

PrefixEncoderWrap::PrefixEncoderWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PrefixEncoderWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw make_error(info.Env(), codes::kInvalidInput,
                     "PrefixEncoder cannot be constructed directly; use PrefixEncoder.create()");
  state_ = *info[0].As<Napi::External<std::shared_ptr<EncoderState>>>().Data();
  std::lock_guard<std::mutex> lock(state_->mu);
  meta_ = param_meta_of(state_->encoder->named_parameters());
  options_ = state_->encoder->options();
}

Napi::Value PrefixEncoderWrap::Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject()) fail(codes::kInvalidInput, "PrefixEncoder.create() needs an options object");
    Napi::Object o = info[0].As<Napi::Object>();
    PrefixEncoderOptions eo;
    eo.num_virtual_tokens = opt_int(o, "numVirtualTokens", 0);
    eo.num_layers = opt_int(o, "numLayers", 0);
    eo.token_dim = opt_int(o, "tokenDim", 0);
    eo.encoder_hidden_size = opt_int(o, "encoderHiddenSize", eo.token_dim);
    eo.prefix_projection = opt_bool(o, "prefixProjection");
    eo.inference_mode = opt_bool(o, "inferenceMode");
    eo.zero_init = opt_bool(o, "zeroInit");
    std::string device_name = o.Get("device").IsUndefined() ? "cpu" : string_arg(o.Get("device"), "device");
    auto state = std::make_shared<EncoderState>();
    // The thread of the model it is made for (its prompt's work and its optimizer's then share that thread's memory),
    // else one of the pool's.
    std::shared_ptr<ModuleState> model = module_state_of(env, o.Get("model"));
    if (model && model->executor()) state->thread = model->executor();
    return PromiseWorker::start_on(state->thread,
        env, "peft_node.PrefixEncoder.create",
        [=] {
          c10::Device device = parse_device(device_name);
          std::lock_guard<std::mutex> lock(state->mu);
          state->encoder = std::make_unique<PrefixEncoder>(eo, device);
        },
        [state](Napi::Env env) -> Napi::Value {
          auto* holder = new std::shared_ptr<EncoderState>(state);
          auto ext = Napi::External<std::shared_ptr<EncoderState>>::New(
              env, holder, [](Napi::Env, std::shared_ptr<EncoderState>* p) { delete p; });
          return env.GetInstanceData<AddonData>()->encoder_ctor.New({ext});
        });
  });
}

Napi::Value PrefixEncoderWrap::Options(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) throw make_error(env, codes::kDisposed, "this prefix encoder was disposed");
  const PrefixEncoderOptions& eo = options_;
  Napi::Object o = Napi::Object::New(env);
  o.Set("numVirtualTokens", static_cast<double>(eo.num_virtual_tokens));
  o.Set("numLayers", static_cast<double>(eo.num_layers));
  o.Set("tokenDim", static_cast<double>(eo.token_dim));
  o.Set("encoderHiddenSize", static_cast<double>(eo.encoder_hidden_size));
  o.Set("prefixProjection", eo.prefix_projection);
  o.Set("inferenceMode", eo.inference_mode);
  o.Set("zeroInit", eo.zero_init);
  return o;
}

Napi::Value PrefixEncoderWrap::ParameterInfo(const Napi::CallbackInfo& info) {
  if (disposed_) throw make_error(info.Env(), codes::kDisposed, "this object was disposed");
  return param_meta_array(info.Env(), meta_);
}

Napi::Value PrefixEncoderWrap::NamesWithGrad(const Napi::CallbackInfo& info) {
  return names_with_grad(info, state_, state_->thread, [](EncoderState& s) -> const auto& { return s.parameters(); });
}

Napi::Value PrefixEncoderWrap::GetParameter(const Napi::CallbackInfo& info) {
  return read_parameter(info, state_, state_->thread, "peft_node.PrefixEncoder.getParameter", false,
                        [](EncoderState& s, const std::string& n) { return live(s).parameter(n); });
}

Napi::Value PrefixEncoderWrap::GetGrad(const Napi::CallbackInfo& info) {
  return read_parameter(info, state_, state_->thread, "peft_node.PrefixEncoder.getGrad", true,
                        [](EncoderState& s, const std::string& n) { return live(s).parameter(n); });
}

Napi::Value PrefixEncoderWrap::SetParameter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string name = string_arg(info[0], "parameter name");
    if (disposed_) fail(codes::kDisposed, "this object was disposed");
    std::vector<int64_t> shape;
    bool found = false;
    for (const ParamMeta& m : meta_)
      if (m.name == name) { shape = m.shape; found = true; }
    if (!found) fail(codes::kInvalidInput, "no parameter named '" + name + "'");
    at::Tensor src = float_tensor(info[1], shape, ("value for '" + name + "'").c_str());
    auto state = state_;
    return PromiseWorker::start_on(state_->thread,
        env, "peft_node.PrefixEncoder.setParameter",
        [=] {
          std::lock_guard<std::mutex> lock(state->mu);
          c10::NoGradGuard no_grad;
          live(state).parameter(name).copy_(src);
        },
        nullptr);
  });
}

Napi::Value PrefixEncoderWrap::ZeroGrad(const Napi::CallbackInfo& info) {
  auto state = state_;
  return PromiseWorker::start_on(state_->thread,
      info.Env(), "peft_node.PrefixEncoder.zeroGrad",
      [state] {
        std::lock_guard<std::mutex> lock(state->mu);
        live(state).zero_grad();
      },
      nullptr);
}

Napi::Value PrefixEncoderWrap::PromptEmbeddings(const Napi::CallbackInfo& info) {
  auto state = state_;
  auto result = std::make_shared<at::Tensor>();
  return PromiseWorker::start_on(state_->thread,
      info.Env(), "peft_node.PrefixEncoder.promptEmbeddings",
      [state, result] {
        std::lock_guard<std::mutex> lock(state->mu);
        *result = live(state).prompt_embeddings();
      },
      [result](Napi::Env env) { return to_typed_array(env, *result); });
}

Napi::Value PrefixEncoderWrap::Dispose(const Napi::CallbackInfo& info) {
  disposed_ = true;
  auto state = state_;
  return PromiseWorker::start_on(state_->thread,
      info.Env(), "peft_node.PrefixEncoder.dispose",
      [state] {
        std::lock_guard<std::mutex> lock(state->mu);
        state->encoder.reset();
      },
      nullptr);
}

// PEFT's get_prompt(batch_size): the adapter's past_key_values for `batch` rows. With requiresGrad the result keeps
// its autograd graph to the encoder's parameters, so a backward through the model that takes it reaches them.
Napi::Value PrefixEncoderWrap::GetPrompt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (disposed_) fail(codes::kDisposed, "this prefix encoder was disposed");
    const int64_t batch = int_arg(info[0], "batch");
    if (batch < 1) fail(codes::kInvalidInput, "get_prompt needs a batch size >= 1");
    const bool requires_grad = info[1].ToBoolean().Value();
    auto state = state_;
    auto past = std::make_shared<PastKeyValuesState>();
    return PromiseWorker::start_on(state_->thread,
        env, "peft_node.PrefixEncoder.getPrompt",
        [state, past, batch, requires_grad] {
          std::lock_guard<std::mutex> lock(state->mu);
          c10::AutoGradMode grad_mode(requires_grad);
          past->values = live(state).forward(batch, g_exact_mode.load());
          if (requires_grad) past->owner = state;
        },
        [past](Napi::Env env) -> Napi::Value { return PastKeyValuesWrap::New(env, past); });
  });
}

}  // namespace peft_node::binding
