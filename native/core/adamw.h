// The optimizer step of HF Trainer with PyTorch's AdamW (torch.optim.AdamW, single-tensor path, optim="adamw_torch"),
// after torch.nn.utils.clip_grad_norm_, op for op, so a training run follows Python's trajectory (peft-reference §7.2,
// §7.5). libtorch's own torch::optim::AdamW is not used: it updates exp_avg with mul_/add_ instead of lerp_.
#pragma once
#include <ATen/Tensor.h>

#include <string>
#include <vector>

namespace peft_node {

struct AdamWHyper {
  double lr = 5e-5;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  // Per parameter (HF puts biases and LayerNorm weights in a no-decay group).
  std::vector<double> weight_decay;
};

struct AdamWParamState {
  at::Tensor exp_avg, exp_avg_sq;
  double step = 0;  // torch keeps a float32 tensor; exact for the counts a run reaches
};

class AdamW {
 public:
  // One update of `params` from their .grad (parameters without a grad are skipped, as torch does).
  void step(const std::vector<at::Tensor>& params, const AdamWHyper& h);
  std::vector<AdamWParamState>& state() { return state_; }
  void reset() { state_.clear(); }

 private:
  std::vector<AdamWParamState> state_;
};

// torch.nn.utils.clip_grad_norm_(params, max_norm): returns the total 2-norm before clipping (what HF logs as
// grad_norm) and scales the grads by min(1, max_norm / (norm + 1e-6)). max_norm <= 0 only measures.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace peft_node
