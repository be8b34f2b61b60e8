// JS class ProcessGroup (see objects.h). Every collective blocks until all ranks arrive, so each runs on libuv's pool
// behind a Promise; the group's mutex keeps this process's collectives in call order.
#include <ATen/ATen.h>

#include "binding/objects.h"
#include "binding/worker.h"

namespace peft_node::binding {

namespace {

ProcessGroup& live(ProcessGroupState& s) {
  if (!s.group) fail(codes::kDisposed, "this process group was disposed");
  return *s.group;
}

}  // namespace

Napi::Function ProcessGroupWrap::Define(Napi::Env env) {
  return DefineClass(env, "ProcessGroup",
                     {StaticMethod<&ProcessGroupWrap::Create>("create"),
                      InstanceMethod<&ProcessGroupWrap::Rank>("rank"),
                      InstanceMethod<&ProcessGroupWrap::WorldSize>("worldSize"),
                      InstanceMethod<&ProcessGroupWrap::AverageGradients>("averageGradients"),
                      InstanceMethod<&ProcessGroupWrap::BroadcastParameters>("broadcastParameters"),
                      InstanceMethod<&ProcessGroupWrap::AllGather>("allGather"),
                      InstanceMethod<&ProcessGroupWrap::AllGatherString>("allGatherString"),
                      InstanceMethod<&ProcessGroupWrap::Barrier>("barrier"),
                      InstanceMethod<&ProcessGroupWrap::Dispose>("dispose")});
}

ProcessGroupWrap::ProcessGroupWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ProcessGroupWrap>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw make_error(info.Env(), codes::kInvalidInput,
                     "ProcessGroup cannot be constructed directly; use init_process_group()");
  state_ = *info[0].As<Napi::External<std::shared_ptr<ProcessGroupState>>>().Data();
  rank_ = state_->group->rank();
  world_size_ = state_->group->world_size();
}

// options: { rank, worldSize, masterAddr, masterPort, hostStore, timeoutMs, backend }
Napi::Value ProcessGroupWrap::Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject()) fail(codes::kInvalidInput, "ProcessGroup.create() needs an options object");
    Napi::Object o = info[0].As<Napi::Object>();
    ProcessGroupOptions po;
    po.rank = static_cast<int>(int_arg(o.Get("rank"), "rank"));
    po.world_size = static_cast<int>(int_arg(o.Get("worldSize"), "worldSize"));
    po.master_addr = string_arg(o.Get("masterAddr"), "masterAddr");
    po.master_port = static_cast<int>(int_arg(o.Get("masterPort"), "masterPort"));
    po.host_store = o.Get("hostStore").ToBoolean().Value();
    po.timeout = std::chrono::milliseconds(int_arg(o.Get("timeoutMs"), "timeoutMs"));
    po.backend = string_arg(o.Get("backend"), "backend");
    auto state = std::make_shared<ProcessGroupState>();
    return PromiseWorker::start(
        env, "peft_node.ProcessGroup.create",
        [=] {
          std::lock_guard<std::mutex> lock(state->mu);
          state->group = std::make_unique<ProcessGroup>(po);
        },
        [state](Napi::Env env) -> Napi::Value {
          auto* holder = new std::shared_ptr<ProcessGroupState>(state);
          auto ext = Napi::External<std::shared_ptr<ProcessGroupState>>::New(
              env, holder, [](Napi::Env, std::shared_ptr<ProcessGroupState>* p) { delete p; });
          return env.GetInstanceData<AddonData>()->process_group_ctor.New({ext});
        });
  });
}

Napi::Value ProcessGroupWrap::Rank(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), rank_); }

Napi::Value ProcessGroupWrap::WorldSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), world_size_);
}

// Runs `op` on a parameter list, holding the group's lock, then the lock of every module the parameters belong to.
Napi::Value ProcessGroupWrap::WithParameters(const Napi::CallbackInfo& info, const char* what, ParamsOp op) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (disposed_) fail(codes::kDisposed, "this process group was disposed");
    std::vector<ParamRef> refs = param_refs_arg(env, info[0], (std::string(what) + "() parameters").c_str());
    auto values = std::make_shared<std::vector<double>>();
    if (info.Length() > 1 && !info[1].IsUndefined()) {
      if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
        fail(codes::kInvalidInput, std::string(what) + "(): counters must be a Float64Array");
      Napi::Float64Array c = info[1].As<Napi::Float64Array>();
      values->assign(c.Data(), c.Data() + c.ElementLength());
    }
    auto state = state_;
    return PromiseWorker::start(
        env, what,
        [state, refs, op, values] {
          std::lock_guard<std::mutex> lock(state->mu);
          LockAll params_lock(mutexes_of(refs));
          *values = op(live(*state), resolve(refs), *values);
        },
        [values](Napi::Env env) -> Napi::Value {
          Napi::Float64Array out = Napi::Float64Array::New(env, values->size());
          std::copy(values->begin(), values->end(), out.Data());
          return out;
        });
  });
}

Napi::Value ProcessGroupWrap::AverageGradients(const Napi::CallbackInfo& info) {
  return WithParameters(info, "averageGradients",
                        [](ProcessGroup& g, const std::vector<at::Tensor>& p, const std::vector<double>& c) {
                          return g.average_gradients(p, c);
                        });
}

Napi::Value ProcessGroupWrap::BroadcastParameters(const Napi::CallbackInfo& info) {
  return WithParameters(info, "broadcastParameters",
                        [](ProcessGroup& g, const std::vector<at::Tensor>& p, const std::vector<double>&) {
                          g.broadcast_parameters(p);
                          return std::vector<double>{};
                        });
}

Napi::Value ProcessGroupWrap::AllGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (disposed_) fail(codes::kDisposed, "this process group was disposed");
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      fail(codes::kInvalidInput, "allGather() needs a Float64Array");
    Napi::Float64Array a = info[0].As<Napi::Float64Array>();
    auto values = std::make_shared<std::vector<double>>(a.Data(), a.Data() + a.ElementLength());
    auto state = state_;
    return PromiseWorker::start(
        env, "peft_node.ProcessGroup.allGather",
        [state, values] {
          std::lock_guard<std::mutex> lock(state->mu);
          *values = live(*state).all_gather(*values);
        },
        [values](Napi::Env env) -> Napi::Value {
          Napi::Float64Array out = Napi::Float64Array::New(env, values->size());
          std::copy(values->begin(), values->end(), out.Data());
          return out;
        });
  });
}

Napi::Value ProcessGroupWrap::AllGatherString(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (disposed_) fail(codes::kDisposed, "this process group was disposed");
    auto value = std::make_shared<std::string>(string_arg(info[0], "value"));
    auto out = std::make_shared<std::vector<std::string>>();
    auto state = state_;
    return PromiseWorker::start(
        env, "peft_node.ProcessGroup.allGatherString",
        [state, value, out] {
          std::lock_guard<std::mutex> lock(state->mu);
          *out = live(*state).all_gather_string(*value);
        },
        [out](Napi::Env env) -> Napi::Value {
          Napi::Array a = Napi::Array::New(env, out->size());
          for (size_t i = 0; i < out->size(); ++i) a.Set(static_cast<uint32_t>(i), (*out)[i]);
          return a;
        });
  });
}

Napi::Value ProcessGroupWrap::Barrier(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (disposed_) fail(codes::kDisposed, "this process group was disposed");
    auto state = state_;
    return PromiseWorker::start(
        env, "peft_node.ProcessGroup.barrier",
        [state] {
          std::lock_guard<std::mutex> lock(state->mu);
          live(*state).barrier();
        },
        nullptr);
  });
}

// Leaves the group: frees the backend (its connections and threads) once queued collectives are done.
Napi::Value ProcessGroupWrap::Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) return env.Undefined();
  disposed_ = true;
  auto state = state_;
  return PromiseWorker::start(
      env, "peft_node.ProcessGroup.dispose",
      [state] {
        std::lock_guard<std::mutex> lock(state->mu);
        state->group.reset();
      },
      nullptr);
}

}  // namespace peft_node::binding
