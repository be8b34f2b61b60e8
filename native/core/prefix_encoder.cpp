#include "core/prefix_encoder.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <mutex>

#include "core/errors.h"

namespace peft_node {

void manual_seed(uint64_t seed) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(seed);
}

namespace {
// nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) for the weight, U(±1/sqrt(fan_in)) for the bias.
// The bounds are computed with the same double arithmetic as torch.nn.init.
void init_linear(at::Tensor& w, at::Tensor& b) {
  const double fan_in = static_cast<double>(w.size(1));
  const double a = std::sqrt(5.0);
  const double gain = std::sqrt(2.0 / (1 + a * a));
  const double std_ = gain / std::sqrt(fan_in);
  const double bound = std::sqrt(3.0) * std_;
  w.uniform_(-bound, bound);
  const double bias_bound = fan_in > 0 ? 1 / std::sqrt(fan_in) : 0;
  b.uniform_(-bias_bound, bias_bound);
}
}  // namespace

PrefixEncoder::PrefixEncoder(const PrefixEncoderOptions& opts, c10::Device device) : opts_(opts) {
  if (opts.num_virtual_tokens <= 0 || opts.num_layers <= 0 || opts.token_dim <= 0)
    fail(codes::kInvalidInput, "prefix encoder needs positive num_virtual_tokens, num_layers and token_dim");
  const bool project = opts.prefix_projection && !opts.inference_mode;
  if (project && opts.encoder_hidden_size <= 0)
    fail(codes::kInvalidInput, "prefix_projection needs a positive encoder_hidden_size");
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  const int64_t P = opts.num_virtual_tokens, D = opts.token_dim, E = opts.encoder_hidden_size;
  {
    c10::NoGradGuard no_grad;
    // Initialised on CPU (where torch's default generator lives), then moved: same values on every device.
    if (project) {
      embedding_ = at::empty({P, D}, f32).normal_(0, 1);
      w1_ = at::empty({E, D}, f32);
      b1_ = at::empty({E}, f32);
      init_linear(w1_, b1_);
      w2_ = at::empty({out_dim(), E}, f32);
      b2_ = at::empty({out_dim()}, f32);
      init_linear(w2_, b2_);
      if (opts.zero_init) {
        w2_.zero_();
        b2_.zero_();
      }
    } else {
      embedding_ = at::empty({P, out_dim()}, f32).normal_(0, 1);
      if (opts.zero_init) embedding_.zero_();
    }
  }
  auto add = [&](const char* name, at::Tensor& t) {
    t = t.to(device).detach().requires_grad_(true);
    params_.emplace_back(name, t);
  };
  add("embedding.weight", embedding_);
  if (project) {
    add("transform.0.weight", w1_);
    add("transform.0.bias", b1_);
    add("transform.2.weight", w2_);
    add("transform.2.bias", b2_);
  }
}

at::Tensor prefix_rows(const at::Tensor& weight, int64_t batch, bool exact) {
  const int64_t P = weight.size(0);
  if (!exact) return weight.unsqueeze(0).expand({batch, P, weight.size(1)});
  auto i64 = at::TensorOptions().dtype(at::kLong).device(weight.device());
  return at::embedding(weight, at::arange(P, i64).unsqueeze(0).expand({batch, P}));
}

at::Tensor PrefixEncoder::forward(int64_t batch, bool exact) const {
  const int64_t P = opts_.num_virtual_tokens;
  if (opts_.inference_mode) return embedding_.repeat({batch, 1, 1});
  if (!w1_.defined()) return prefix_rows(embedding_, batch, exact);
  auto i64 = at::TensorOptions().dtype(at::kLong).device(embedding_.device());
  if (!exact) {
    // Every row gets the same prefix: compute it once and broadcast (PEFT runs the encoder per row).
    at::Tensor e = at::embedding(embedding_, at::arange(P, i64).unsqueeze(0));
    e = at::linear(at::tanh(at::linear(e, w1_, b1_)), w2_, b2_);
    return e.expand({batch, P, e.size(2)});
  }
  at::Tensor e = at::embedding(embedding_, at::arange(P, i64).unsqueeze(0).expand({batch, P}));
  return at::linear(at::tanh(at::linear(e, w1_, b1_)), w2_, b2_);
}

at::Tensor PrefixEncoder::prompt_embeddings() const {
  c10::NoGradGuard no_grad;
  return forward(1, /*exact=*/false)[0].detach().to(at::kCPU).contiguous();
}

at::Tensor PrefixEncoder::parameter(const std::string& name) const {
  std::string valid;
  for (const auto& [n, t] : params_) {
    if (n == name) return t;
    valid += (valid.empty() ? "" : ", ") + n;
  }
  fail(codes::kInvalidInput, "prefix encoder has no parameter '" + name + "' (it has: " + valid + ")");
}

void PrefixEncoder::zero_grad() {
  for (auto& [n, t] : params_) {
    at::Tensor& g = t.mutable_grad();
    if (g.defined()) g = at::Tensor();  // set_to_none=True, torch's default since 2.0
  }
}

void PrefixEncoder::set_requires_grad(bool requires_grad) {
  for (auto& [n, t] : params_) t.requires_grad_(requires_grad);
}

}  // namespace peft_node
