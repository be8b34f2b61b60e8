// Shared plumbing for the binding: Promise-returning AsyncWorkers and C++ -> JS error conversion.
// Every native failure (peft_node::Error, c10::Error, std::exception) becomes a JS Error with a `code`;
// nothing is allowed to escape as a C++ exception into Node (which would abort the process).
#pragma once
#include <ATen/Tensor.h>
#include <c10/util/Exception.h>
#include <napi.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "binding/executor.h"
#include "core/errors.h"

namespace peft_node::binding {

inline Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

// Runs `fn` and turns any C++ exception into (code, message).
template <typename Fn>
bool capture_errors(Fn&& fn, std::string& code, std::string& message) {
  try {
    fn();
    return true;
  } catch (const Error& e) {
    code = e.code();
    message = e.what();
  } catch (const c10::Error& e) {
    code = codes::kTorch;
    message = e.what_without_backtrace();
  } catch (const std::exception& e) {
    code = codes::kTorch;
    message = e.what();
  } catch (...) {
    code = codes::kTorch;
    message = "unknown native error";
  }
  return false;
}

// For synchronous methods: run `fn`, rethrow failures as JS errors with a code.
template <typename Fn>
Napi::Value guarded(Napi::Env env, Fn&& fn) {
  Napi::Value result;
  std::string code, message;
  if (capture_errors([&] { result = fn(); }, code, message)) return result;
  throw make_error(env, code, message);
}

// Requested intra-op thread count (0 = libtorch's default). OpenMP keeps the count per thread, so each worker applies
// it on its own libuv thread before running.
inline std::atomic<int> g_num_threads{0};

// set_exact_mode(): transformers' op graph everywhere (core's ExecutionOptions::exact), read when a call runs.
inline std::atomic<bool> g_exact_mode{false};

// Set when the Node environment tears down (process.exit, worker termination): workers waiting for the JS thread
// (a streaming generate) must stop waiting, or exit would wait for them forever.
inline std::atomic<bool> g_env_closing{false};

inline void apply_thread_setting() {
  const int want = g_num_threads.load();
  if (want > 0 && at::get_num_threads() != want) at::set_num_threads(want);
}

// An AsyncWorker whose Execute runs `run` on the libuv pool and whose Promise resolves with `resolve(env)`.
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, const char* name, std::function<void()> run,
                std::function<Napi::Value(Napi::Env)> resolve, std::shared_ptr<Executor> executor = nullptr)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)), run_(std::move(run)),
        resolve_(std::move(resolve)), executor_(std::move(executor)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  // start() with the work run on `executor`'s thread (a model's own thread).
  static Napi::Value start_on(std::shared_ptr<Executor> executor, Napi::Env env, const char* name,
                              std::function<void()> run, std::function<Napi::Value(Napi::Env)> resolve) {
    return start(env, name, std::move(run), std::move(resolve), std::move(executor));
  }

  // Queues the worker and returns its Promise. With an executor, `run` happens on the executor's thread.
  static Napi::Value start(Napi::Env env, const char* name, std::function<void()> run,
                           std::function<Napi::Value(Napi::Env)> resolve, std::shared_ptr<Executor> executor = nullptr) {
    auto* w = new PromiseWorker(env, name, std::move(run), std::move(resolve), std::move(executor));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

 protected:
  void Execute() override {
    std::string message;
    auto body = [this] {
      apply_thread_setting();
      run_();
    };
    if (!capture_errors([&] { executor_ ? executor_->run(body) : body(); }, code_, message)) SetError(message);
  }
  void OnOK() override {
    Napi::Env env = Env();
    std::string code, message;
    Napi::Value value;
    if (capture_errors([&] { value = resolve_ ? resolve_(env) : env.Undefined(); }, code, message))
      deferred_.Resolve(value);
    else
      deferred_.Reject(make_error(env, code, message).Value());
  }
  void OnError(const Napi::Error& e) override {
    Napi::Error err = e;
    err.Set("code", Napi::String::New(Env(), code_.empty() ? codes::kTorch : code_));
    deferred_.Reject(err.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> run_;
  std::function<Napi::Value(Napi::Env)> resolve_;
  std::shared_ptr<Executor> executor_;
  std::string code_;
};

// Copies of JS inputs, taken on the main thread so the worker never touches JS memory.
// Int32Array / BigInt64Array -> int64 CPU tensor of `shape`; Float32Array / Float64Array -> float32/64 CPU tensor.
at::Tensor int64_tensor(const Napi::Value& v, std::vector<int64_t> shape, const char* what);
at::Tensor float_tensor(const Napi::Value& v, std::vector<int64_t> shape, const char* what);
std::string string_arg(const Napi::Value& v, const char* what);
int64_t int_arg(const Napi::Value& v, const char* what);

// A float tensor (any dtype, any device) as a new Float32Array, or Float64Array when `f64`.
Napi::Value to_typed_array(Napi::Env env, const at::Tensor& t, bool f64 = false);
Napi::Array shape_array(Napi::Env env, at::IntArrayRef shape);

// Reads a named parameter of `state` — its values, or with `grad` its .grad — on the object's thread (executor may be
// null: libuv's pool), resolving to a Float32Array, or null when there is no such tensor (no grad yet).
template <typename State, typename Find>
Napi::Value read_parameter(const Napi::CallbackInfo& info, std::shared_ptr<State> state,
                           std::shared_ptr<Executor> executor, const char* what, bool grad, Find find) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string name = string_arg(info[0], "parameter name");
    auto result = std::make_shared<at::Tensor>();
    return PromiseWorker::start(
        env, what,
        [=] {
          std::lock_guard<std::mutex> lock(state->mu);
          at::Tensor t = find(*state, name);
          if (grad) t = t.grad();
          if (t.defined()) *result = t.detach().to(at::kCPU, at::kFloat).contiguous();
        },
        [result](Napi::Env env) -> Napi::Value { return result->defined() ? to_typed_array(env, *result) : env.Null(); },
        executor);
  });
}

// Names of the parameters currently holding a .grad, read on the object's thread. `params(state)` lists them.
template <typename State, typename Params>
Napi::Value names_with_grad(const Napi::CallbackInfo& info, std::shared_ptr<State> state,
                            std::shared_ptr<Executor> executor, Params params) {
  auto names = std::make_shared<std::vector<std::string>>();
  return PromiseWorker::start(
      info.Env(), "peft_node.namesWithGrad",
      [=] {
        std::lock_guard<std::mutex> lock(state->mu);
        for (const auto& [n, t] : params(*state))
          if (t.grad().defined()) names->push_back(n);
      },
      [names](Napi::Env env) {
        Napi::Array out = Napi::Array::New(env, names->size());
        for (size_t i = 0; i < names->size(); ++i) out.Set(static_cast<uint32_t>(i), (*names)[i]);
        return out;
      },
      executor);
}


}  // namespace peft_node::binding
