// Parameter lists across native modules: what an optimizer updates, what clipping measures, what a data-parallel
// group averages (tch-rs's trainable variable store, over modules that each keep their own). JS passes
// [module, name] pairs; the work resolves them to tensors under the modules' locks.
#pragma once
#include <ATen/Tensor.h>
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "binding/executor.h"

namespace peft_node::binding {

struct ModuleState;

struct ParamRef {
  std::shared_ptr<ModuleState> module;
  std::string name;
};

// [module, name][] (module: a native BloomModel or PrefixEncoder) -> refs. Main thread; ERR_INVALID_INPUT naming a
// bad entry.
std::vector<ParamRef> param_refs_arg(Napi::Env env, const Napi::Value& v, const char* what);

// A module's state from its JS object (BloomModel or PrefixEncoder), or null for anything else.
std::shared_ptr<ModuleState> module_state_of(Napi::Env env, const Napi::Value& v);

// Holds every given mutex (nulls and duplicates skipped), taken in address order: any two threads that lock sets of
// modules this way never deadlock, whatever sets they lock.
class LockAll {
 public:
  explicit LockAll(std::vector<std::mutex*> mutexes);
  ~LockAll();
  LockAll(const LockAll&) = delete;
  LockAll& operator=(const LockAll&) = delete;

 private:
  std::vector<std::mutex*> held_;
};

// The modules' mutexes.
std::vector<std::mutex*> mutexes_of(const std::vector<ParamRef>& refs);
// The tensors, in order; call with the modules' locks held. ERR_DISPOSED / ERR_INVALID_INPUT name what is wrong.
std::vector<at::Tensor> resolve(const std::vector<ParamRef>& refs);
// Where work on these parameters runs: the first module's own thread if it has one (libuv's pool otherwise).
std::shared_ptr<Executor> executor_of(const std::vector<ParamRef>& refs);

}  // namespace peft_node::binding
