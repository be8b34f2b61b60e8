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
  GenerateWorker(Napi::Env env, std::shared_ptr<ModelState> model, std::shared_ptr<PastKeyValuesState> past,
                 at::Tensor ids, at::Tensor mask, GenerateOptions opts, Napi::Function on_step)
      : Napi::AsyncProgressQueueWorker<int64_t>(env, "peft_node.BloomModel.generate"),
        deferred_(Napi::Promise::Deferred::New(env)), model_(std::move(model)), past_(std::move(past)),
        ids_(std::move(ids)), mask_(std::move(mask)), opts_(std::move(opts)) {
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
    if (!capture_errors([&] { model_->thread->run(body); }, code_, message)) SetError(message);
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
    LockAll lock({&model_->mu, past_ ? &past_->mu : nullptr});
    if (!model_->model) fail(codes::kDisposed, "this model was disposed");
    const BloomModel& m = *model_->model;
    c10::NoGradGuard no_grad;
    const int64_t B = ids_.size(0);
    at::Tensor raw;  // the prefix as the initial KV cache (PEFT: get_prompt(B) as past_key_values)
    if (past_) {
      if (past_->disposed) fail(codes::kDisposed, "these past_key_values were disposed");
      raw = past_->values.detach();
      if (raw.size(0) != B) raw = raw.expand({B, -1, -1});
    }
    const bool streaming = !on_step_.IsEmpty();
    int64_t sent = 0;
    out_ = generate(m, ids_, mask_, raw, opts_, model_->execution_options(), [&](const at::Tensor& next) {
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
  std::shared_ptr<PastKeyValuesState> past_;
  at::Tensor ids_, mask_;
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
    std::shared_ptr<PastKeyValuesState> past = past_key_values_arg(env, o.Get("pastKeyValues"), B, config_);
    Napi::Function on_step = o.Get("onStep").IsFunction() ? o.Get("onStep").As<Napi::Function>() : Napi::Function();
    auto* w = new GenerateWorker(env, state_, past, ids, mask, g, on_step);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

}  // namespace peft_node::binding
