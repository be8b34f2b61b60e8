// JS class PrefixEncoder: the trainable store of a PEFT prefix (embedding, optional MLP). Its parameters live in
// native memory; JS reads and writes them through Promise-returning calls.
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
                      InstanceMethod<&PrefixEncoderWrap::OptimizerStep>("optimizerStep"),
                      InstanceMethod<&PrefixEncoderWrap::GetOptimizerState>("getOptimizerState"),
                      InstanceMethod<&PrefixEncoderWrap::SetOptimizerState>("setOptimizerState"),
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
  return names_with_grad(info, state_, nullptr, [](EncoderState& s) -> const auto& { return live(s).named_parameters(); });
}

Napi::Value PrefixEncoderWrap::GetParameter(const Napi::CallbackInfo& info) {
  return read_parameter(info, state_, nullptr, "peft_node.PrefixEncoder.getParameter", false,
                        [](EncoderState& s, const std::string& n) { return live(s).parameter(n); });
}

Napi::Value PrefixEncoderWrap::GetGrad(const Napi::CallbackInfo& info) {
  return read_parameter(info, state_, nullptr, "peft_node.PrefixEncoder.getGrad", true,
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

// One optimizer update, as HF Trainer does it after the last micro-batch of a window: clip_grad_norm_ (when
// maxGradNorm > 0), AdamW, then zero_grad (set to none). Resolves with the pre-clip gradient norm.
Napi::Value PrefixEncoderWrap::OptimizerStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject()) fail(codes::kInvalidInput, "optimizerStep() needs an options object");
    Napi::Object o = info[0].As<Napi::Object>();
    auto num = [&](const char* key) {
      Napi::Value v = o.Get(key);
      if (!v.IsNumber()) fail(codes::kInvalidInput, std::string(key) + " must be a number");
      return v.As<Napi::Number>().DoubleValue();
    };
    AdamWHyper h;
    h.lr = num("lr");
    h.beta1 = num("beta1");
    h.beta2 = num("beta2");
    h.eps = num("eps");
    const double max_grad_norm = num("maxGradNorm");
    Napi::Value wd = o.Get("weightDecay");
    if (!wd.IsArray()) fail(codes::kInvalidInput, "weightDecay must be an array (one value per parameter)");
    Napi::Array wda = wd.As<Napi::Array>();
    for (uint32_t i = 0; i < wda.Length(); ++i) h.weight_decay.push_back(wda.Get(i).As<Napi::Number>().DoubleValue());
    auto state = state_;
    auto norm = std::make_shared<double>(0);
    return PromiseWorker::start(
        env, "peft_node.PrefixEncoder.optimizerStep",
        [=] {
          std::lock_guard<std::mutex> lock(state->mu);
          PrefixEncoder& enc = live(state);
          std::vector<at::Tensor> params;
          for (const auto& [n, t] : enc.named_parameters()) params.push_back(t);
          *norm = clip_grad_norm(params, max_grad_norm);
          state->optimizer.step(params, h);
          enc.zero_grad();
        },
        [norm](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *norm); });
  });
}

// { step: number[], exp_avg: Float32Array[], exp_avg_sq: Float32Array[] } in parameter order (empty before the
// first step) — what a checkpoint needs to resume exactly.
Napi::Value PrefixEncoderWrap::GetOptimizerState(const Napi::CallbackInfo& info) {
  auto state = state_;
  auto copy = std::make_shared<std::vector<AdamWParamState>>();
  return PromiseWorker::start(
      info.Env(), "peft_node.PrefixEncoder.getOptimizerState",
      [state, copy] {
        std::lock_guard<std::mutex> lock(state->mu);
        live(state);
        for (const AdamWParamState& s : state->optimizer.state())
          copy->push_back({s.exp_avg.defined() ? s.exp_avg.to(at::kCPU).contiguous() : at::Tensor(),
                           s.exp_avg_sq.defined() ? s.exp_avg_sq.to(at::kCPU).contiguous() : at::Tensor(), s.step});
      },
      [copy](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        Napi::Array steps = Napi::Array::New(env), m = Napi::Array::New(env), v = Napi::Array::New(env);
        for (uint32_t i = 0; i < copy->size(); ++i) {
          const AdamWParamState& s = (*copy)[i];
          steps.Set(i, s.step);
          m.Set(i, s.exp_avg.defined() ? to_typed_array(env, s.exp_avg) : env.Null());
          v.Set(i, s.exp_avg_sq.defined() ? to_typed_array(env, s.exp_avg_sq) : env.Null());
        }
        o.Set("step", steps);
        o.Set("exp_avg", m);
        o.Set("exp_avg_sq", v);
        return o;
      });
}

Napi::Value PrefixEncoderWrap::SetOptimizerState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (disposed_) fail(codes::kDisposed, "this prefix encoder was disposed");
    if (!info[0].IsObject()) fail(codes::kInvalidInput, "setOptimizerState() needs a state object");
    Napi::Object o = info[0].As<Napi::Object>();
    Napi::Value sv = o.Get("step"), mv = o.Get("exp_avg"), vv = o.Get("exp_avg_sq");
    if (!sv.IsArray() || !mv.IsArray() || !vv.IsArray())
      fail(codes::kInvalidInput, "optimizer state needs arrays step, exp_avg, exp_avg_sq");
    Napi::Array steps = sv.As<Napi::Array>(), m = mv.As<Napi::Array>(), v = vv.As<Napi::Array>();
    const uint32_t n = steps.Length();
    if (n != 0 && (n != meta_.size() || m.Length() != n || v.Length() != n))
      fail(codes::kShapeMismatch, "optimizer state has " + std::to_string(n) + " entries, the encoder has " +
                                      std::to_string(meta_.size()) + " parameters");
    auto loaded = std::make_shared<std::vector<AdamWParamState>>();
    for (uint32_t i = 0; i < n; ++i) {
      AdamWParamState s;
      s.step = steps.Get(i).As<Napi::Number>().DoubleValue();
      if (!m.Get(i).IsNull()) {
        s.exp_avg = float_tensor(m.Get(i), meta_[i].shape, "exp_avg").to(at::kFloat);
        s.exp_avg_sq = float_tensor(v.Get(i), meta_[i].shape, "exp_avg_sq").to(at::kFloat);
      }
      loaded->push_back(std::move(s));
    }
    auto state = state_;
    return PromiseWorker::start(
        env, "peft_node.PrefixEncoder.setOptimizerState",
        [state, loaded] {
          std::lock_guard<std::mutex> lock(state->mu);
          PrefixEncoder& enc = live(state);
          auto params = enc.named_parameters();
          for (size_t i = 0; i < loaded->size(); ++i) {
            AdamWParamState& s = (*loaded)[i];
            if (s.exp_avg.defined()) {
              s.exp_avg = s.exp_avg.to(params[i].second.device());
              s.exp_avg_sq = s.exp_avg_sq.to(params[i].second.device());
            }
          }
          state->optimizer.state() = std::move(*loaded);
        },
        nullptr);
  });
}

}  // namespace peft_node::binding
