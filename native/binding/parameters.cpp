#include "binding/parameters.h"

#include <algorithm>

#include "binding/objects.h"
#include "binding/worker.h"

namespace peft_node::binding {

std::shared_ptr<ModuleState> module_state_of(Napi::Env env, const Napi::Value& v) {
  if (!v.IsObject()) return nullptr;
  AddonData* data = env.GetInstanceData<AddonData>();
  Napi::Object o = v.As<Napi::Object>();
  if (o.InstanceOf(data->model_ctor.Value())) return BloomModelWrap::Unwrap(o)->state();
  if (o.InstanceOf(data->encoder_ctor.Value())) return PrefixEncoderWrap::Unwrap(o)->state();
  return nullptr;
}

std::vector<ParamRef> param_refs_arg(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsArray()) fail(codes::kInvalidInput, std::string(what) + " must be an array of [module, name] pairs");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<ParamRef> refs;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    Napi::Array pair = e.IsArray() ? e.As<Napi::Array>() : Napi::Array();
    std::shared_ptr<ModuleState> module = e.IsArray() && pair.Length() == 2 ? module_state_of(env, pair.Get(0u)) : nullptr;
    if (!module || !pair.Get(1u).IsString())
      fail(codes::kInvalidInput, std::string(what) + "[" + std::to_string(i) +
                                     "] must be [module, name] with a native model or prefix encoder");
    refs.push_back({std::move(module), pair.Get(1u).As<Napi::String>().Utf8Value()});
  }
  return refs;
}

LockAll::LockAll(std::vector<std::mutex*> mutexes) {
  mutexes.erase(std::remove(mutexes.begin(), mutexes.end(), nullptr), mutexes.end());
  std::sort(mutexes.begin(), mutexes.end(), std::less<std::mutex*>());
  mutexes.erase(std::unique(mutexes.begin(), mutexes.end()), mutexes.end());
  for (std::mutex* m : mutexes) {
    m->lock();
    held_.push_back(m);
  }
}

LockAll::~LockAll() {
  for (auto it = held_.rbegin(); it != held_.rend(); ++it) (*it)->unlock();
}

std::vector<std::mutex*> mutexes_of(const std::vector<ParamRef>& refs) {
  std::vector<std::mutex*> out;
  for (const ParamRef& r : refs) out.push_back(&r.module->mu);
  return out;
}

std::vector<at::Tensor> resolve(const std::vector<ParamRef>& refs) {
  std::vector<at::Tensor> out;
  out.reserve(refs.size());
  for (const ParamRef& r : refs) {
    const auto& params = r.module->parameters();
    auto it = std::find_if(params.begin(), params.end(), [&](const auto& p) { return p.first == r.name; });
    if (it == params.end()) fail(codes::kInvalidInput, "no parameter named '" + r.name + "'");
    out.push_back(it->second);
  }
  return out;
}

std::shared_ptr<Executor> executor_of(const std::vector<ParamRef>& refs) {
  for (const ParamRef& r : refs)
    if (auto e = r.module->executor()) return e;
  return nullptr;
}

const std::vector<std::pair<std::string, at::Tensor>>& ModelState::parameters() {
  if (!model) fail(codes::kDisposed, "this model was disposed");
  return model->named_parameters();
}

const std::vector<std::pair<std::string, at::Tensor>>& EncoderState::parameters() {
  if (!encoder) fail(codes::kDisposed, "this prefix encoder was disposed");
  return encoder->named_parameters();
}

}  // namespace peft_node::binding
