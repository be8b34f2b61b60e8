// PEFT's PrefixEncoder (peft/tuners/prefix_tuning/model.py): Embedding(P, 2·L·D), or with prefix_projection
// Embedding(P, D) -> Linear(D, E) -> Tanh -> Linear(E, 2·L·D). These are the only trainable parameters.
#pragma once
#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace peft_node {

struct PrefixEncoderOptions {
  int64_t num_virtual_tokens = 0;  // P
  int64_t num_layers = 0;          // L
  int64_t token_dim = 0;           // D
  int64_t encoder_hidden_size = 0; // E (projection only)
  bool prefix_projection = false;
  bool inference_mode = false;     // PEFT builds a plain Embedding(P, 2·L·D) for loaded adapters, even with projection
  bool zero_init = false;          // init_weights="zero": zero the last layer (PEFT >= 0.19)
};

class PrefixEncoder {
 public:
  // Parameters are created in PEFT's order from torch's default CPU generator (embedding normal_, then each Linear's
  // weight and bias uniform in ±1/sqrt(fan_in)), so seeding that generator reproduces Python's init bit for bit.
  PrefixEncoder(const PrefixEncoderOptions& opts, c10::Device device);

  const PrefixEncoderOptions& options() const { return opts_; }
  int64_t out_dim() const { return 2 * opts_.num_layers * opts_.token_dim; }

  // [B, P, 2·L·D]: training mode looks up arange(P) expanded to B rows (PEFT's get_prompt); inference mode repeats
  // embedding.weight, as PEFT does for loaded adapters. `exact` runs the encoder per row as PEFT does (its gradient
  // then sums over rows in PEFT's order); otherwise once, broadcast over the batch.
  at::Tensor forward(int64_t batch, bool exact) const;
  // get_prompt_embedding_to_save: the [P, 2·L·D] float32 tensor an adapter file stores (the MLP output if projecting).
  at::Tensor prompt_embeddings() const;

  // Names relative to the encoder: embedding.weight, transform.0.weight, transform.0.bias, transform.2.weight, ...
  const std::vector<std::pair<std::string, at::Tensor>>& named_parameters() const { return params_; }
  at::Tensor parameter(const std::string& name) const;  // ERR_INVALID_INPUT naming the valid ones
  void zero_grad();
  void set_requires_grad(bool requires_grad);

 private:
  PrefixEncoderOptions opts_;
  at::Tensor embedding_, w1_, b1_, w2_, b2_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
};

// PEFT's get_prompt for a plain prefix embedding: `weight` [P, W] looked up at arange(P) for each of `batch` rows
// ([batch, P, W], differentiable). `exact` does PEFT's embedding lookup per row (so the gradient is summed over
// rows as embedding's backward sums it); otherwise the weight is broadcast.
at::Tensor prefix_rows(const at::Tensor& weight, int64_t batch, bool exact);

// Seeds torch's default CPU generator (torch.manual_seed on CPU).
void manual_seed(uint64_t seed);

}  // namespace peft_node
