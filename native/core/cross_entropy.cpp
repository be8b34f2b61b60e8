#include "core/cross_entropy.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/custom_function.h>

namespace peft_node {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                            const at::Tensor& targets, double denom, int64_t chunk_rows) {
    const int64_t M = hidden.size(0);
    const bool want_grad = hidden.requires_grad();
    // float32 as transformers' loss (logits.float()); a float64 model stays float64 (finite-difference checks).
    const at::ScalarType acc = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor loss_sum = at::zeros({}, hidden.options().dtype(acc));
    at::Tensor grad_hidden = want_grad ? at::empty_like(hidden) : at::Tensor();
    for (int64_t start = 0; start < M; start += chunk_rows) {
      const int64_t n = std::min(chunk_rows, M - start);
      at::Tensor h = hidden.narrow(0, start, n);
      at::Tensor y = targets.narrow(0, start, n);
      at::Tensor logits = at::linear(h, weight).to(acc);
      at::Tensor lse = at::logsumexp(logits, -1);
      loss_sum += (lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)).sum();
      if (want_grad) {
        at::Tensor g = (logits - lse.unsqueeze(1)).exp_();  // softmax, in place over the chunk's logits
        g.scatter_add_(1, y.unsqueeze(1), at::full({n, 1}, -1.0, g.options()));
        grad_hidden.narrow(0, start, n).copy_(at::mm(g.to(weight.scalar_type()), weight));
      }
    }
    if (want_grad) ctx->save_for_backward({grad_hidden});
    ctx->saved_data["denom"] = denom;
    return loss_sum / denom;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const double denom = ctx->saved_data["denom"].toDouble();
    auto saved = ctx->get_saved_variables();
    at::Tensor grad = saved.empty() ? at::Tensor() : saved[0] * (grad_outputs[0] / denom).to(saved[0].scalar_type());
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                double denom, int64_t chunk_rows) {
  return LinearCrossEntropy::apply(hidden, weight, targets, denom, chunk_rows);
}

}  // namespace peft_node
