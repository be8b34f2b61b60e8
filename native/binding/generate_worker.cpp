// BloomModel.generate(): the whole decode runs on the libuv pool; each step's new tokens are queued back to the JS
// thread (AsyncProgressQueueWorker) for streaming, and a streamer returning false stops the decode after that step.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "binding/objects.h"
#include "binding/worker.h"
#include "core/generation.h"

namespace peft_node::binding {

namespace {

class GenerateWorker : public Napi::AsyncProgressQueueWorker<int64_t> {
 public:
  GenerateWorker(Napi::Env env, std::shared_ptr<ModelState> model, std::shared_ptr<EncoderState> encoder,
                 at::Tensor ids, at::Tensor mask, at::Tensor prefix_weight, GenerateOptions opts, Napi::Function on_step)
      : Napi::AsyncProgressQueueWorker<int64_t>(env, "peft_node.BloomModel.generate"),
        deferred_(Napi::Promise::Deferred::New(env)), model_(std::move(model)), encoder_(std::move(encoder)),
        ids_(std::move(ids)), mask_(std::move(mask)), prefix_weight_(std::move(prefix_weight)), opts_(std::move(opts)) {
    if (!on_step.IsEmpty()) on_step_ = Napi::Persistent(on_step);
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute(const ExecutionProgress& progress) override {
    std::string message;
    auto body = [&] {
      apply_thread_setting();
      run(progress);
    };
    if (!capture_errors([&] { model_->executor->run(body); }, code_, message)) SetError(message);
  }

  void OnProgress(const int64_t* data, size_t count) override {
    if (on_step_.IsEmpty()) return;
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    Napi::Int32Array tokens = Napi::Int32Array::New(env, count);
    for (size_t i = 0; i < count; ++i) tokens[i] = static_cast<int32_t>(data[i]);
    Napi::Value r;
    try {
      r = on_step_.Call({tokens});
    } catch (const Napi::Error& e) {
      // A throwing streamer stops the decode; its error becomes the Promise's rejection.
      stop_ = true;
      streamer_error_ = Napi::Persistent(e.Value());
      ack();
      return;
    }
    if (r.IsBoolean() && !r.As<Napi::Boolean>().Value()) stop_ = true;
    ack();
  }

  // The decode waits for the streamer to see each step, so "return false" stops exactly after that step.
  void ack() {
    std::lock_guard<std::mutex> lock(ack_mu_);
    ++acked_;
    ack_cv_.notify_all();
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (!streamer_error_.IsEmpty()) {
      deferred_.Reject(streamer_error_.Value());
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    const at::Tensor& s = out_.sequences;
    Napi::Int32Array seq = Napi::Int32Array::New(env, s.numel());
    const int64_t* p = s.data_ptr<int64_t>();
    for (int64_t i = 0; i < s.numel(); ++i) seq[static_cast<size_t>(i)] = static_cast<int32_t>(p[i]);
    o.Set("sequences", seq);
    o.Set("dims", shape_array(env, s.sizes()));
    if (!out_.scores.empty()) {
      at::Tensor all = at::stack(out_.scores);  // [n, B, V]
      o.Set("scores", to_typed_array(env, all));
      o.Set("scoresDims", shape_array(env, all.sizes()));
    }
    deferred_.Resolve(o);
  }

  void OnError(const Napi::Error& e) override {
    Napi::Error err = e;
    err.Set("code", Napi::String::New(Env(), code_.empty() ? codes::kTorch : code_));
    deferred_.Reject(err.Value());
  }

 private:
  void run(const ExecutionProgress& progress) {
    std::lock_guard<std::mutex> lock(model_->mu);
    std::unique_lock<std::mutex> enc_lock;
    if (encoder_) enc_lock = std::unique_lock<std::mutex>(encoder_->mu);
    if (!model_->model) fail(codes::kDisposed, "this model was disposed");
    const BloomModel& m = *model_->model;
    c10::NoGradGuard no_grad;
    const int64_t B = ids_.size(0);
    at::Tensor raw;
    if (prefix_weight_.defined()) {
      raw = prefix_weight_.to(m.device()).unsqueeze(0).expand({B, -1, -1});
    } else if (encoder_) {
      if (!encoder_->encoder) fail(codes::kDisposed, "this prefix encoder was disposed");
      const PrefixEncoderOptions& eo = encoder_->encoder->options();
      if (eo.num_layers != m.config().n_layer || eo.token_dim != m.config().hidden_size)
        fail(codes::kShapeMismatch, "prefix encoder does not match the model (num_layers / token_dim)");
      raw = encoder_->encoder->forward(B);  // PEFT's get_prompt(B)
    }
    const bool streaming = !on_step_.IsEmpty();
    int64_t sent = 0;
    out_ = generate(m, ids_, mask_, raw, opts_, [&](const at::Tensor& next) {
      if (!streaming) return true;
      at::Tensor c = next.contiguous();
      progress.Send(c.data_ptr<int64_t>(), static_cast<size_t>(c.numel()));
      ++sent;
      std::unique_lock<std::mutex> lock(ack_mu_);
      while (!ack_cv_.wait_for(lock, std::chrono::milliseconds(50), [&] { return acked_ >= sent; }))
        if (g_env_closing.load()) return false;
      return !stop_.load();
    });
  }

  Napi::Promise::Deferred deferred_;
  std::shared_ptr<ModelState> model_;
  std::shared_ptr<EncoderState> encoder_;
  at::Tensor ids_, mask_, prefix_weight_;
  GenerateOptions opts_;
  Napi::FunctionReference on_step_;
  Napi::ObjectReference streamer_error_;
  std::atomic<bool> stop_{false};
  std::mutex ack_mu_;
  std::condition_variable ack_cv_;
  int64_t acked_ = 0;
  std::string code_;
  GenerateOutputs out_;
};

}  // namespace

Napi::Value BloomModelWrap::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (disposed_) fail(codes::kDisposed, "this model was disposed");
    if (!info[0].IsObject()) fail(codes::kInvalidInput, "generate() needs an inputs object");
    Napi::Object in = info[0].As<Napi::Object>();
    Napi::Object o = info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
    const int64_t B = int_arg(in.Get("batch"), "batch"), T = int_arg(in.Get("seqLen"), "seqLen");
    if (B < 1 || T < 1) fail(codes::kInvalidInput, "input_ids must be a non-empty [batch, seq_len] array");
    at::Tensor ids = int64_tensor(in.Get("inputIds"), {B, T}, "input_ids");
    at::Tensor mask;
    if (!in.Get("attentionMask").IsUndefined()) mask = int64_tensor(in.Get("attentionMask"), {B, T}, "attention_mask");
    GenerateOptions g;
    auto num = [&](const char* k, double fallback) {
      Napi::Value v = o.Get(k);
      if (v.IsUndefined() || v.IsNull()) return fallback;
      if (!v.IsNumber()) fail(codes::kInvalidInput, std::string(k) + " must be a number");
      return v.As<Napi::Number>().DoubleValue();
    };
    g.max_new_tokens = static_cast<int64_t>(num("maxNewTokens", 20));
    g.do_sample = o.Get("doSample").ToBoolean().Value();
    g.temperature = num("temperature", 1.0);
    g.top_k = static_cast<int64_t>(num("topK", 50));
    g.top_p = num("topP", 1.0);
    g.repetition_penalty = num("repetitionPenalty", 1.0);
    g.pad_token_id = static_cast<int64_t>(num("padTokenId", -1));
    g.output_scores = o.Get("outputScores").ToBoolean().Value();
    if (!o.Get("seed").IsUndefined()) g.seed = static_cast<uint64_t>(int_arg(o.Get("seed"), "seed"));
    if (o.Get("eosTokenIds").IsArray()) {
      Napi::Array a = o.Get("eosTokenIds").As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); ++i) g.eos_token_ids.push_back(int_arg(a.Get(i), "eos_token_id"));
    }
    at::Tensor prefix_weight;
    std::shared_ptr<EncoderState> encoder;
    if (!o.Get("prefix").IsUndefined()) {
      const int64_t P = int_arg(o.Get("numVirtualTokens"), "numVirtualTokens");
      prefix_weight = float_tensor(o.Get("prefix"), {P, 2 * config_.n_layer * config_.hidden_size}, "prefix");
    }
    if (!o.Get("encoder").IsUndefined()) {
      AddonData* data = env.GetInstanceData<AddonData>();
      Napi::Value ev = o.Get("encoder");
      if (!ev.IsObject() || !ev.As<Napi::Object>().InstanceOf(data->encoder_ctor.Value()))
        fail(codes::kInvalidInput, "encoder must be a native PrefixEncoder");
      encoder = PrefixEncoderWrap::Unwrap(ev.As<Napi::Object>())->state();
    }
    Napi::Function on_step = o.Get("onStep").IsFunction() ? o.Get("onStep").As<Napi::Function>() : Napi::Function();
    auto* w = new GenerateWorker(env, state_, encoder, ids, mask, prefix_weight, g, on_step);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

}  // namespace peft_node::binding
