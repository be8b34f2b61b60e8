#include "binding/worker.h"

#include "binding/objects.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>

namespace peft_node::binding {

namespace {
int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
}  // namespace

at::Tensor int64_tensor(const Napi::Value& v, std::vector<int64_t> shape, const char* what) {
  if (!v.IsTypedArray()) fail(codes::kInvalidInput, std::string(what) + " must be an Int32Array or BigInt64Array");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  const int64_t n = numel_of(shape);
  if (static_cast<int64_t>(ta.ElementLength()) != n)
    fail(codes::kInvalidInput, std::string(what) + " has " + std::to_string(ta.ElementLength()) +
                                   " elements, expected " + std::to_string(n));
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kLong));
  auto* dst = out.data_ptr<int64_t>();
  if (ta.TypedArrayType() == napi_int32_array) {
    const int32_t* src = ta.As<Napi::Int32Array>().Data();
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  } else if (ta.TypedArrayType() == napi_bigint64_array) {
    std::memcpy(dst, ta.As<Napi::BigInt64Array>().Data(), n * sizeof(int64_t));
  } else {
    fail(codes::kInvalidInput, std::string(what) + " must be an Int32Array or BigInt64Array");
  }
  return out;
}

at::Tensor float_tensor(const Napi::Value& v, std::vector<int64_t> shape, const char* what) {
  if (!v.IsTypedArray()) fail(codes::kInvalidInput, std::string(what) + " must be a Float32Array or Float64Array");
  Napi::TypedArray ta = v.As<Napi::TypedArray>();
  const int64_t n = numel_of(shape);
  if (static_cast<int64_t>(ta.ElementLength()) != n)
    fail(codes::kInvalidInput, std::string(what) + " has " + std::to_string(ta.ElementLength()) +
                                   " elements, expected " + std::to_string(n));
  if (ta.TypedArrayType() == napi_float32_array) {
    at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
    std::memcpy(out.data_ptr(), ta.As<Napi::Float32Array>().Data(), n * sizeof(float));
    return out;
  }
  if (ta.TypedArrayType() == napi_float64_array) {
    at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kDouble));
    std::memcpy(out.data_ptr(), ta.As<Napi::Float64Array>().Data(), n * sizeof(double));
    return out;
  }
  fail(codes::kInvalidInput, std::string(what) + " must be a Float32Array or Float64Array");
}

std::string string_arg(const Napi::Value& v, const char* what) {
  if (!v.IsString()) fail(codes::kInvalidInput, std::string(what) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

int64_t int_arg(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) fail(codes::kInvalidInput, std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::floor(d) != d || std::fabs(d) > 9007199254740991.0)
    fail(codes::kInvalidInput, std::string(what) + " must be an integer");
  return static_cast<int64_t>(d);
}

Napi::Value to_typed_array(Napi::Env env, const at::Tensor& t, bool f64) {
  at::Tensor c = t.detach().to(at::kCPU, f64 ? at::kDouble : at::kFloat).contiguous();
  const size_t n = static_cast<size_t>(c.numel());
  if (f64) {
    Napi::Float64Array out = Napi::Float64Array::New(env, n);
    if (n) std::memcpy(out.Data(), c.data_ptr<double>(), n * sizeof(double));
    return out;
  }
  Napi::Float32Array out = Napi::Float32Array::New(env, n);
  if (n) std::memcpy(out.Data(), c.data_ptr<float>(), n * sizeof(float));
  return out;
}

Napi::Array shape_array(Napi::Env env, at::IntArrayRef shape) {
  Napi::Array a = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(shape[i])));
  return a;
}



Napi::Value param_meta_array(Napi::Env env, const std::vector<ParamMeta>& meta) {
  Napi::Array out = Napi::Array::New(env, meta.size());
  for (size_t i = 0; i < meta.size(); ++i) {
    Napi::Array row = Napi::Array::New(env, 3);
    row.Set(0u, meta[i].name);
    row.Set(1u, shape_array(env, meta[i].shape));
    row.Set(2u, meta[i].requires_grad);
    out.Set(static_cast<uint32_t>(i), row);
  }
  return out;
}

std::vector<ParamMeta> param_meta_of(const std::vector<std::pair<std::string, at::Tensor>>& params) {
  std::vector<ParamMeta> meta;
  for (const auto& [name, t] : params) meta.push_back({name, t.sizes().vec(), t.requires_grad()});
  return meta;
}


}  // namespace peft_node::binding
