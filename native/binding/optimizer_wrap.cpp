// JS class AdamW (torch.optim.AdamW over a parameter list) and clipGradNorm (torch.nn.utils.clip_grad_norm_). The
// parameters may belong to any modules; each call takes their locks (parameters.h) and runs on the first one's thread.
#include <ATen/ATen.h>

#include "binding/objects.h"
#include "binding/worker.h"

namespace peft_node::binding {

Napi::Function AdamWWrap::Define(Napi::Env env) {
  return DefineClass(env, "AdamW",
                     {StaticMethod<&AdamWWrap::Create>("create"),
                      InstanceMethod<&AdamWWrap::Step>("step"),
                      InstanceMethod<&AdamWWrap::ZeroGrad>("zeroGrad"),
                      InstanceMethod<&AdamWWrap::GetState>("getState"),
                      InstanceMethod<&AdamWWrap::SetState>("setState")});
}

AdamWWrap::AdamWWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AdamWWrap>(info) {
  if (info.Length() != 2 || !info[0].IsExternal())
    throw make_error(info.Env(), codes::kInvalidInput, "AdamW cannot be constructed directly; use AdamW.create()");
  state_ = *info[0].As<Napi::External<std::shared_ptr<AdamWState>>>().Data();
  Napi::Array shapes = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < shapes.Length(); ++i) {
    Napi::Array d = shapes.Get(i).As<Napi::Array>();
    std::vector<int64_t> shape;
    for (uint32_t j = 0; j < d.Length(); ++j) shape.push_back(d.Get(j).As<Napi::Number>().Int64Value());
    shapes_.push_back(std::move(shape));
  }
}

Napi::Value AdamWWrap::Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto state = std::make_shared<AdamWState>();
    state->params = param_refs_arg(env, info[0], "AdamW parameters");
    if (!info[1].IsObject()) fail(codes::kInvalidInput, "AdamW.create() needs an options object");
    Napi::Object o = info[1].As<Napi::Object>();
    auto num = [&](const char* key) {
      Napi::Value v = o.Get(key);
      if (!v.IsNumber()) fail(codes::kInvalidInput, std::string(key) + " must be a number");
      return v.As<Napi::Number>().DoubleValue();
    };
    state->hyper.beta1 = num("beta1");
    state->hyper.beta2 = num("beta2");
    state->hyper.eps = num("eps");
    Napi::Value wd = o.Get("weightDecay");
    if (!wd.IsArray() || wd.As<Napi::Array>().Length() != state->params.size())
      fail(codes::kInvalidInput, "weightDecay must be an array with one value per parameter");
    Napi::Array wda = wd.As<Napi::Array>();
    for (uint32_t i = 0; i < wda.Length(); ++i) state->hyper.weight_decay.push_back(wda.Get(i).ToNumber().DoubleValue());
    // The shapes, for checking a loaded state on the JS thread: read under each module's lock.
    Napi::Array shapes = Napi::Array::New(env, state->params.size());
    {
      LockAll lock(mutexes_of(state->params));
      std::vector<at::Tensor> params = resolve(state->params);
      for (uint32_t i = 0; i < params.size(); ++i) shapes.Set(i, shape_array(env, params[i].sizes()));
    }
    auto* holder = new std::shared_ptr<AdamWState>(state);
    auto ext = Napi::External<std::shared_ptr<AdamWState>>::New(
        env, holder, [](Napi::Env, std::shared_ptr<AdamWState>* p) { delete p; });
    return env.GetInstanceData<AddonData>()->adamw_ctor.New({ext, shapes});
  });
}

// One AdamW update at learning rate `lr` from the parameters' .grad (a parameter without one is skipped, as torch).
Napi::Value AdamWWrap::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsNumber()) fail(codes::kInvalidInput, "AdamW.step() needs the learning rate");
    const double lr = info[0].As<Napi::Number>().DoubleValue();
    auto state = state_;
    return PromiseWorker::start(
        env, "peft_node.AdamW.step",
        [state, lr] {
          std::lock_guard<std::mutex> lock(state->mu);
          LockAll params_lock(mutexes_of(state->params));
          AdamWHyper h = state->hyper;
          h.lr = lr;
          state->optimizer.step(resolve(state->params), h);
        },
        nullptr, executor_of(state_->params));
  });
}

// optimizer.zero_grad() with set_to_none=True, torch's default since 2.0.
Napi::Value AdamWWrap::ZeroGrad(const Napi::CallbackInfo& info) {
  auto state = state_;
  return PromiseWorker::start(
      info.Env(), "peft_node.AdamW.zeroGrad",
      [state] {
        std::lock_guard<std::mutex> lock(state->mu);
        LockAll params_lock(mutexes_of(state->params));
        for (at::Tensor& p : resolve(state->params)) p.mutable_grad() = at::Tensor();
      },
      nullptr, executor_of(state_->params));
}

// { step: number[], exp_avg: Float32Array[], exp_avg_sq: Float32Array[] } in parameter order (empty before the
// first step) — what a checkpoint needs to resume exactly.
Napi::Value AdamWWrap::GetState(const Napi::CallbackInfo& info) {
  auto state = state_;
  auto copy = std::make_shared<std::vector<AdamWParamState>>();
  return PromiseWorker::start(
      info.Env(), "peft_node.AdamW.getState",
      [state, copy] {
        std::lock_guard<std::mutex> lock(state->mu);
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

Napi::Value AdamWWrap::SetState(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject()) fail(codes::kInvalidInput, "AdamW.setState() needs a state object");
    Napi::Object o = info[0].As<Napi::Object>();
    Napi::Value sv = o.Get("step"), mv = o.Get("exp_avg"), vv = o.Get("exp_avg_sq");
    if (!sv.IsArray() || !mv.IsArray() || !vv.IsArray())
      fail(codes::kInvalidInput, "optimizer state needs arrays step, exp_avg, exp_avg_sq");
    Napi::Array steps = sv.As<Napi::Array>(), m = mv.As<Napi::Array>(), v = vv.As<Napi::Array>();
    const uint32_t n = steps.Length();
    if (n != 0 && (n != shapes_.size() || m.Length() != n || v.Length() != n))
      fail(codes::kShapeMismatch, "optimizer state has " + std::to_string(n) + " entries, the optimizer has " +
                                      std::to_string(shapes_.size()) + " parameters");
    auto loaded = std::make_shared<std::vector<AdamWParamState>>();
    for (uint32_t i = 0; i < n; ++i) {
      AdamWParamState s;
      s.step = steps.Get(i).ToNumber().DoubleValue();
      if (!m.Get(i).IsNull()) {
        s.exp_avg = float_tensor(m.Get(i), shapes_[i], "exp_avg").to(at::kFloat);
        s.exp_avg_sq = float_tensor(v.Get(i), shapes_[i], "exp_avg_sq").to(at::kFloat);
      }
      loaded->push_back(std::move(s));
    }
    auto state = state_;
    return PromiseWorker::start(
        env, "peft_node.AdamW.setState",
        [state, loaded] {
          std::lock_guard<std::mutex> lock(state->mu);
          LockAll params_lock(mutexes_of(state->params));
          std::vector<at::Tensor> params = resolve(state->params);
          for (size_t i = 0; i < loaded->size(); ++i) {
            AdamWParamState& s = (*loaded)[i];
            if (s.exp_avg.defined()) {
              s.exp_avg = s.exp_avg.to(params[i].device());
              s.exp_avg_sq = s.exp_avg_sq.to(params[i].device());
            }
          }
          state->optimizer.state() = std::move(*loaded);
        },
        nullptr);
  });
}

Napi::Value ClipGradNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::vector<ParamRef> refs = param_refs_arg(env, info[0], "clip_grad_norm_ parameters");
    if (!info[1].IsNumber()) fail(codes::kInvalidInput, "clip_grad_norm_ needs max_norm (a number)");
    const double max_norm = info[1].As<Napi::Number>().DoubleValue();
    auto norm = std::make_shared<double>(0);
    return PromiseWorker::start(
        env, "peft_node.clipGradNorm",
        [refs, max_norm, norm] {
          LockAll lock(mutexes_of(refs));
          *norm = clip_grad_norm(resolve(refs), max_norm);
        },
        [norm](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *norm); }, executor_of(refs));
  });
}

}  // namespace peft_node::binding
