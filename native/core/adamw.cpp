#include "core/adamw.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "core/errors.h"

namespace peft_node {

void AdamW::step(const std::vector<at::Tensor>& params, const AdamWHyper& h) {
  c10::NoGradGuard no_grad;
  if (h.weight_decay.size() != params.size())
    fail(codes::kInvalidInput, "AdamW: weight_decay needs one value per parameter");
  if (state_.size() != params.size()) {
    state_.assign(params.size(), AdamWParamState{});
  }
  for (size_t i = 0; i < params.size(); ++i) {
    at::Tensor p = params[i];
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    AdamWParamState& s = state_[i];
    if (!s.exp_avg.defined()) {
      s.exp_avg = at::zeros_like(p, at::MemoryFormat::Preserve);
      s.exp_avg_sq = at::zeros_like(p, at::MemoryFormat::Preserve);
    }
    s.step += 1;
    const double wd = h.weight_decay[i];
    if (wd != 0) p.mul_(1 - h.lr * wd);
    s.exp_avg.lerp_(g, 1 - h.beta1);
    s.exp_avg_sq.mul_(h.beta2).addcmul_(g, g, 1 - h.beta2);
    const double bias_correction1 = 1 - std::pow(h.beta1, s.step);
    const double bias_correction2 = 1 - std::pow(h.beta2, s.step);
    const double step_size = h.lr / bias_correction1;
    const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
    at::Tensor denom = (s.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(h.eps);
    p.addcdiv_(s.exp_avg, denom, -step_size);
  }
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> grads, norms;
  for (const at::Tensor& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0;
  for (const at::Tensor& g : grads) norms.push_back(at::linalg_vector_norm(g, 2));
  at::Tensor total = at::linalg_vector_norm(at::stack(norms), 2);
  const double total_value = total.item<double>();
  if (max_norm > 0) {
    // max_norm / (total + 1e-6) is Tensor.__rtruediv__ in Python: reciprocal(), then a multiply.
    at::Tensor coef = at::clamp_max(at::reciprocal(total + 1e-6) * max_norm, 1.0);
    for (at::Tensor& g : grads) g.mul_(coef);
  }
  return total_value;
}

}  // namespace peft_node
