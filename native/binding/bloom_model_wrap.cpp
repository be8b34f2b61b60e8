// JS class BloomModel: load / forward (+backward) / parameters. Heavy work runs in PromiseWorkers under the model's
// mutex; the JS thread only copies inputs and outputs.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "binding/objects.h"
#include "binding/worker.h"

namespace peft_node::binding {

namespace {

BloomModel& live(ModelState& s) {
  if (!s.model) fail(codes::kDisposed, "this model was disposed");
  return *s.model;
}
BloomModel& live(const std::shared_ptr<ModelState>& s) { return live(*s); }

Napi::Object config_object(Napi::Env env, const BloomConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("model_type", c.model_type);
  o.Set("vocab_size", static_cast<double>(c.vocab_size));
  o.Set("hidden_size", static_cast<double>(c.hidden_size));
  o.Set("n_layer", static_cast<double>(c.n_layer));
  o.Set("n_head", static_cast<double>(c.n_head));
  o.Set("layer_norm_epsilon", c.layer_norm_epsilon);
  o.Set("apply_residual_connection_post_layernorm", c.apply_residual_connection_post_layernorm);
  o.Set("tie_word_embeddings", c.tie_word_embeddings);
  return o;
}

const at::Tensor& find_param(const BloomModel& m, const std::string& name) {
  for (const auto& [n, t] : m.named_parameters())
    if (n == name) return t;
  fail(codes::kInvalidInput, "the model has no parameter '" + name + "'");
}

}  // namespace

Napi::Function BloomModelWrap::Define(Napi::Env env) {
  return DefineClass(env, "BloomModel",
                     {StaticMethod<&BloomModelWrap::Load>("load"),
                      InstanceMethod<&BloomModelWrap::Config>("config"),
                      InstanceMethod<&BloomModelWrap::ParameterInfo>("parameterInfo"),
                      InstanceMethod<&BloomModelWrap::GetParameter>("getParameter"),
                      InstanceMethod<&BloomModelWrap::GetGrad>("getGrad"),
                      InstanceMethod<&BloomModelWrap::SetParameter>("setParameter"),
                      InstanceMethod<&BloomModelWrap::Forward>("forward"),
                      InstanceMethod<&BloomModelWrap::Generate>("generate"),
                      InstanceMethod<&BloomModelWrap::Dispose>("dispose"),
                      InstanceMethod<&BloomModelWrap::NamesWithGrad>("namesWithGrad"),
                      InstanceMethod<&BloomModelWrap::IsDisposed>("isDisposed")});
}

BloomModelWrap::BloomModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BloomModelWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw make_error(info.Env(), codes::kInvalidInput, "BloomModel cannot be constructed directly; use BloomModel.load()");
  state_ = *info[0].As<Napi::External<std::shared_ptr<ModelState>>>().Data();
  std::lock_guard<std::mutex> lock(state_->mu);
  meta_ = param_meta_of(state_->model->named_parameters());
  config_ = state_->model->config();
  dtype_ = dtype_name(state_->model->dtype());
  device_ = state_->model->device().str();
}

Napi::Value BloomModelWrap::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string dir = string_arg(info[0], "model directory");
    std::string device_name = string_arg(info[1], "device");
    std::string dtype_name_ = string_arg(info[2], "dtype");
    auto state = std::make_shared<ModelState>();
    if (info[3].IsObject()) {
      Napi::Value attn = info[3].As<Napi::Object>().Get("attnImplementation");
      if (!attn.IsUndefined()) state->execution.attn_implementation = parse_attn_implementation(string_arg(attn, "attnImplementation"));
    }
    return PromiseWorker::start_on(state->thread,
        env, "peft_node.BloomModel.load",
        [=] {
          c10::Device device = parse_device(device_name);
          at::ScalarType dtype = parse_dtype(dtype_name_);
          std::lock_guard<std::mutex> lock(state->mu);
          state->model = BloomModel::from_pretrained(dir, device, dtype);
        },
        [state](Napi::Env env) -> Napi::Value {
          auto* holder = new std::shared_ptr<ModelState>(state);
          auto ext = Napi::External<std::shared_ptr<ModelState>>::New(
              env, holder, [](Napi::Env, std::shared_ptr<ModelState>* p) { delete p; });
          return env.GetInstanceData<AddonData>()->model_ctor.New({ext});
        });
  });
}

Napi::Value BloomModelWrap::Config(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) throw make_error(env, codes::kDisposed, "this model was disposed");
  Napi::Object o = config_object(env, config_);
  o.Set("dtype", dtype_);
  o.Set("device", device_);
  return o;
}

Napi::Value BloomModelWrap::ParameterInfo(const Napi::CallbackInfo& info) {
  if (disposed_) throw make_error(info.Env(), codes::kDisposed, "this object was disposed");
  return param_meta_array(info.Env(), meta_);
}

Napi::Value BloomModelWrap::NamesWithGrad(const Napi::CallbackInfo& info) {
  return names_with_grad(info, state_, state_->thread, [](ModelState& s) -> const auto& { return s.parameters(); });
}

Napi::Value BloomModelWrap::GetParameter(const Napi::CallbackInfo& info) {
  return read_parameter(info, state_, state_->thread, "peft_node.BloomModel.getParameter", false,
                        [](ModelState& s, const std::string& n) { return find_param(live(s), n); });
}

Napi::Value BloomModelWrap::GetGrad(const Napi::CallbackInfo& info) {
  return read_parameter(info, state_, state_->thread, "peft_node.BloomModel.getGrad", true,
                        [](ModelState& s, const std::string& n) { return find_param(live(s), n); });
}

Napi::Value BloomModelWrap::SetParameter(const Napi::CallbackInfo& info) {
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
        env, "peft_node.BloomModel.setParameter",
        [=] {
          std::lock_guard<std::mutex> lock(state->mu);
          BloomModel& m = live(state);
          const at::Tensor& t = find_param(m, name);
          c10::NoGradGuard no_grad;
          at::Tensor(t).copy_(src);
          m.weights_changed();
        },
        nullptr);
  });
}

Napi::Value BloomModelWrap::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject()) fail(codes::kInvalidInput, "forward() needs an inputs object");
    Napi::Object in = info[0].As<Napi::Object>();
    Napi::Object opts = info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
    const int64_t B = int_arg(in.Get("batch"), "batch"), T = int_arg(in.Get("seqLen"), "seqLen");
    if (B < 1 || T < 1) fail(codes::kInvalidInput, "input_ids must be a non-empty [batch, seq_len] array");
    ForwardInputs inputs;
    inputs.input_ids = int64_tensor(in.Get("inputIds"), {B, T}, "input_ids");
    if (!in.Get("attentionMask").IsUndefined())
      inputs.attention_mask = int64_tensor(in.Get("attentionMask"), {B, T}, "attention_mask");
    if (!in.Get("labels").IsUndefined()) inputs.labels = int64_tensor(in.Get("labels"), {B, T}, "labels");
    if (!in.Get("numItemsInBatch").IsUndefined())
      inputs.num_items_in_batch = int_arg(in.Get("numItemsInBatch"), "num_items_in_batch");
    const bool backward = opts.Get("backward").ToBoolean();
    // HF Trainer's `loss *= num_processes` under DDP (average_tokens_across_devices): the loss returned and
    // differentiated is scaled, as in Python.
    double loss_scale = 1.0;
    if (!opts.Get("lossScale").IsUndefined()) {
      if (!opts.Get("lossScale").IsNumber()) fail(codes::kInvalidInput, "lossScale must be a number");
      loss_scale = opts.Get("lossScale").As<Napi::Number>().DoubleValue();
    }
    const bool return_logits = opts.Has("returnLogits") ? opts.Get("returnLogits").ToBoolean().Value() : true;
    if (backward && !inputs.labels.defined())
      fail(codes::kInvalidInput, "backward needs labels (there is no loss to differentiate)");
    std::shared_ptr<PastKeyValuesState> past = past_key_values_arg(env, opts.Get("pastKeyValues"), B, config_);

    struct Result {
      double loss = 0;
      bool has_loss = false;
      at::Tensor logits;
      bool f64 = false;
    };
    auto result = std::make_shared<Result>();
    auto state = state_;
    return PromiseWorker::start_on(state_->thread,
        env, "peft_node.BloomModel.forward",
        [=] {
          // A backward through past_key_values writes the gradients of the module that made them: its lock too.
          LockAll lock({&state->mu, past ? &past->mu : nullptr, past && past->owner ? &past->owner->mu : nullptr});
          BloomModel& m = live(state);
          c10::AutoGradMode grad_mode(backward);
          at::Tensor prefix;
          if (past) {
            if (past->disposed) fail(codes::kDisposed, "these past_key_values were disposed");
            if (backward && !past->values.requires_grad())
              fail(codes::kInvalidInput, "backward needs past_key_values made for training (get_prompt with requires_grad): "
                                         "nothing else in the model gets a gradient");
            if (backward && past->backward_done)
              fail(codes::kInvalidInput, "these past_key_values were already used for a backward, which freed their graph "
                                         "(as torch does): get a new prompt for each training step");
            prefix = past->values.size(0) == B ? past->values : past->values.expand({B, -1, -1});
          }
          ForwardOutputs out = m.forward(inputs, prefix, return_logits, state->execution_options());
          if (out.loss.defined() && loss_scale != 1.0) out.loss = out.loss * loss_scale;
          if (out.loss.defined()) {
            result->has_loss = true;
            result->loss = out.loss.item<double>();
          }
          if (backward) {
            out.loss.backward();
            if (past) past->backward_done = true;
          }
          if (out.logits.defined()) {
            result->f64 = out.logits.scalar_type() == at::kDouble;
            result->logits = out.logits.detach().to(at::kCPU, result->f64 ? at::kDouble : at::kFloat).contiguous();
          }
        },
        [result](Napi::Env env) -> Napi::Value {
          Napi::Object o = Napi::Object::New(env);
          if (result->has_loss) o.Set("loss", result->loss);
          if (result->logits.defined()) {
            o.Set("logits", to_typed_array(env, result->logits, result->f64));
            o.Set("logitsDims", shape_array(env, result->logits.sizes()));
          }
          return o;
        });
  });
}

Napi::Value BloomModelWrap::Dispose(const Napi::CallbackInfo& info) {
  disposed_ = true;
  auto state = state_;
  return PromiseWorker::start_on(state_->thread,
      info.Env(), "peft_node.BloomModel.dispose",
      [state] {
        std::lock_guard<std::mutex> lock(state->mu);  // waits for a running call to finish
        state->model.reset();
      },
      nullptr);
}

Napi::Value BloomModelWrap::IsDisposed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), disposed_);
}

}  // namespace peft_node::binding
