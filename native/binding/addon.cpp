// Module entry: registers the native classes and a few process-level functions.
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <napi.h>
#include <torch/version.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "binding/checkpoint_wrap.h"
#include "core/cpu_info.h"
#include "binding/objects.h"
#include "binding/worker.h"

namespace peft_node::binding {

namespace {

Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    int64_t seed = int_arg(info[0], "seed");
    if (seed < 0) fail(codes::kInvalidInput, "seed must be a non-negative integer");
    manual_seed(static_cast<uint64_t>(seed));
    return info.Env().Undefined();
  });
}

Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    int64_t n = int_arg(info[0], "threads");
    if (n < 1) fail(codes::kInvalidInput, "threads must be >= 1");
    g_num_threads.store(static_cast<int>(n));
    at::set_num_threads(static_cast<int>(n));
    return info.Env().Undefined();
  });
}

Napi::Value SetExactMode(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsBoolean()) fail(codes::kInvalidInput, "set_exact_mode needs a boolean");
    g_exact_mode.store(info[0].As<Napi::Boolean>().Value());
    return info.Env().Undefined();
  });
}

// Called from process.on('exit'): process.exit() joins libuv's threads without running environment cleanup hooks, so
// a decode waiting for its streamer must be released here.
Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  g_env_closing.store(true);
  return info.Env().Undefined();
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Napi::Object o = Napi::Object::New(env);
    o.Set("torchVersion", TORCH_VERSION);
    const auto& hooks = at::detail::getCUDAHooks();
    const bool cuda = hooks.hasCUDA();
    o.Set("cudaAvailable", cuda);
    o.Set("cudaDeviceCount", cuda ? static_cast<double>(hooks.deviceCount()) : 0.0);
#ifdef PEFT_NODE_WITH_CUDA
    o.Set("builtWithCuda", true);
#else
    o.Set("builtWithCuda", false);
#endif
    o.Set("numThreads", at::get_num_threads());
    o.Set("exactMode", g_exact_mode.load());
    o.Set("parallelInfo", at::get_parallel_info());
    const std::vector<std::string> backends = distributed_backends();
    Napi::Array b = Napi::Array::New(env, backends.size());
    for (size_t i = 0; i < backends.size(); ++i) b.Set(static_cast<uint32_t>(i), backends[i]);
    o.Set("distributedBackends", b);
    const CpuInfo cpu = cpu_info();
    Napi::Object c = Napi::Object::New(env);
    c.Set("vendor", cpu.vendor);
    c.Set("family", cpu.family);
    c.Set("model", cpu.model);
    c.Set("modelName", cpu.model_name);
    Napi::Array isa = Napi::Array::New(env, cpu.isa.size());
    for (size_t i = 0; i < cpu.isa.size(); ++i) isa.Set(static_cast<uint32_t>(i), cpu.isa[i]);
    c.Set("isa", isa);
    c.Set("capability", cpu.capability);
    o.Set("cpu", c);
    return o;
  });
}

// Bytes the C heap holds for the program (glibc: every arena's in-use chunks plus mmapped blocks), or null where
// that is not known. Unlike RSS it does not move with the allocator's trimming and fragmentation: the leak check of
// the long-run test reads it.
Napi::Value MallocInUse(const Napi::CallbackInfo& info) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  const struct mallinfo2 m = mallinfo2();
  return Napi::Number::New(info.Env(), static_cast<double>(m.uordblks + m.hblkhd));
#else
  return info.Env().Null();
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.AddCleanupHook([] { g_env_closing.store(true); });  // environment teardown (worker threads)
  auto* data = new AddonData();
  data->model_ctor = Napi::Persistent(BloomModelWrap::Define(env));
  data->encoder_ctor = Napi::Persistent(PrefixEncoderWrap::Define(env));
  env.SetInstanceData<AddonData>(data);
  exports.Set("BloomModel", data->model_ctor.Value());
  exports.Set("PrefixEncoder", data->encoder_ctor.Value());
  data->checkpoint_ctor = Napi::Persistent(CheckpointWrap::Define(env));
  exports.Set("Checkpoint", data->checkpoint_ctor.Value());
  data->process_group_ctor = Napi::Persistent(ProcessGroupWrap::Define(env));
  exports.Set("ProcessGroup", data->process_group_ctor.Value());
  data->past_key_values_ctor = Napi::Persistent(PastKeyValuesWrap::Define(env));
  exports.Set("PastKeyValues", data->past_key_values_ctor.Value());
  data->adamw_ctor = Napi::Persistent(AdamWWrap::Define(env));
  exports.Set("AdamW", data->adamw_ctor.Value());
  exports.Set("clipGradNorm", Napi::Function::New(env, ClipGradNorm, "clipGradNorm"));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed, "manualSeed"));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads, "setNumThreads"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("setExactMode", Napi::Function::New(env, SetExactMode, "setExactMode"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
  exports.Set("mallocInUse", Napi::Function::New(env, MallocInUse, "mallocInUse"));
  return exports;
}

}  // namespace

}  // namespace peft_node::binding

// NODE_API_MODULE pastes the function name into an identifier, so it needs an unqualified name.
static Napi::Object InitPeftNode(Napi::Env env, Napi::Object exports) { return peft_node::binding::Init(env, exports); }
NODE_API_MODULE(peft_node, InitPeftNode)
