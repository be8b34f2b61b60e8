// The causal-LM loss without materialising [rows, vocab] logits for backward: lm_head and cross-entropy run chunk by
// chunk over only the rows that have a target (shifted label != -100), and the gradient with respect to the hidden
// states is formed in the same pass (softmax - onehot) @ W, so nothing vocab-sized is kept. Frozen lm_head only.
#pragma once
#include <ATen/Tensor.h>

namespace peft_node {

// hidden [M, D] (requires grad or not), weight [V, D] (frozen), targets [M] int64 in [0, V).
// Returns sum over rows of CE(hidden @ weight^T, targets) / denom, as a 0-dim float32 tensor.
at::Tensor linear_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& targets,
                                double denom, int64_t chunk_rows = 256);

}  // namespace peft_node
