// JS class PrefixEncoder: the trainable store of a PEFT prefix (embedding, optional MLP). Its parameters live in
// native memory; JS reads and writes them through Promise-returning calls.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "binding/objects.h"
#include "binding/worker.h"

namespace peft_node::binding {

namespace {

PrefixEncoder& live(const std::shared_ptr<EncoderState>& s) {
  if (!s->encoder) fail(codes::kDisposed, "this prefix encoder was disposed");
  return *s->encoder;
}

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
    return PromiseWorker::start(
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
  auto state = state_;
  auto names = std::make_shared<std::vector<std::string>>();
  return PromiseWorker::start(
      info.Env(), "peft_node.namesWithGrad",
      [state, names] {
        std::lock_guard<std::mutex> lock(state->mu);
        for (const auto& [n, t] : live(state).named_parameters())
          if (t.grad().defined()) names->push_back(n);
      },
      [names](Napi::Env env) { return names_with_grad_array(env, *names); });
}

Napi::Value PrefixEncoderWrap::GetParameter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string name = string_arg(info[0], "parameter name");
    auto state = state_;
    auto result = std::make_shared<at::Tensor>();
    return PromiseWorker::start(
        env, "peft_node.PrefixEncoder.getParameter",
        [=] {
          std::lock_guard<std::mutex> lock(state->mu);
          *result = live(state).parameter(name).detach().to(at::kCPU).contiguous();
        },
        [result](Napi::Env env) { return to_typed_array(env, *result); });
  });
}

Napi::Value PrefixEncoderWrap::GetGrad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string name = string_arg(info[0], "parameter name");
    auto state = state_;
    auto result = std::make_shared<at::Tensor>();
    return PromiseWorker::start(
        env, "peft_node.PrefixEncoder.getGrad",
        [=] {
          std::lock_guard<std::mutex> lock(state->mu);
          at::Tensor g = live(state).parameter(name).grad();
          if (g.defined()) *result = g.detach().to(at::kCPU).contiguous();
        },
        [result](Napi::Env env) -> Napi::Value {
          if (!result->defined()) return env.Null();
          return to_typed_array(env, *result);
        });
  });
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
    return PromiseWorker::start(
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
  return PromiseWorker::start(
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
  return PromiseWorker::start(
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
  return PromiseWorker::start(
      info.Env(), "peft_node.PrefixEncoder.dispose",
      [state] {
        std::lock_guard<std::mutex> lock(state->mu);
        state->encoder.reset();
      },
      nullptr);
}

}  // namespace peft_node::binding
