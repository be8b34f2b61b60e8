// BloomForCausalLM in libtorch: the forward of transformers' modeling_bloom.py, op for op (peft-reference §4), with an
// optional prefix of past key/values (PEFT prefix tuning, §3). Base weights are frozen: they never require grad, so a
// backward pass only reaches the prefix.
#pragma once
#include <ATen/Tensor.h>
#include <c10/core/Device.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"

namespace peft_node {

struct ForwardInputs {
  at::Tensor input_ids;       // [B, T] int64
  at::Tensor attention_mask;  // [B, T] integer, or undefined (all ones)
  at::Tensor labels;          // [B, T] int64 in [-100] ∪ [0, vocab), or undefined (no loss)
  std::optional<int64_t> num_items_in_batch;  // loss = sum / num_items_in_batch instead of the mean
};

struct ForwardOutputs {
  at::Tensor logits;  // [B, T, V] in the model dtype (undefined when not requested)
  at::Tensor loss;    // 0-dim float32, undefined without labels
};

class BloomModel {
 public:
  // Loads <dir>/config.json and its safetensors weights, converted to `dtype` on `device`.
  static std::unique_ptr<BloomModel> from_pretrained(const std::string& dir, c10::Device device,
                                                     at::ScalarType dtype);
  BloomModel(BloomConfig config, const std::vector<std::pair<std::string, at::Tensor>>& weights, c10::Device device,
             at::ScalarType dtype, const std::string& source);

  const BloomConfig& config() const { return config_; }
  c10::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }

  // Checks ids, mask and labels (ERR_INVALID_INPUT naming what is wrong) before any compute.
  void validate(const ForwardInputs& in) const;

  // prefix_raw: [B, P, 2·L·D] in PEFT's flat layout ((layer*2+kv)*n_head+head)*head_dim+d, any floating dtype
  // (cast to the model dtype, differentiably), or undefined.
  ForwardOutputs forward(const ForwardInputs& in, const at::Tensor& prefix_raw, bool need_logits) const;

  // One incremental step over a preallocated KV cache (generation). ids [B, t] are the new tokens at cache positions
  // [past, past + t); m2 [B, past + t] is the float mask of every position so far (prefix ones included); k_cache /
  // v_cache hold one [B, H, capacity, head_dim] tensor per layer, positions [0, past) already filled. Writes the new
  // keys/values and returns the float32 logits of the last position, [B, V].
  at::Tensor step_logits(const at::Tensor& ids, const at::Tensor& m2, int64_t past, std::vector<at::Tensor>& k_cache,
                         std::vector<at::Tensor>& v_cache) const;

  // Parameters under transformers' names (transformer.word_embeddings.weight, transformer.h.0...), tied lm_head
  // counted once, in module registration order.
  const std::vector<std::pair<std::string, at::Tensor>>& named_parameters() const { return params_; }
  int64_t num_parameters() const;
  // Call after writing into a parameter (load_state_dict): drops caches derived from the weights.
  void weights_changed() { lm_head_t_ = at::Tensor(); }

 private:
  // Embedding, ALiBi, mask and every block, for ids at cache positions [past, past + T) over the mask m2 of all
  // positions so far; past_kv(l, k, v) turns the layer's new keys/values into all of them (prefix or cache first).
  at::Tensor run_blocks(const at::Tensor& ids, const at::Tensor& m2, int64_t past,
                        const std::function<void(int64_t, at::Tensor&, at::Tensor&)>& past_kv) const;

  struct Layer {
    at::Tensor ln1_w, ln1_b, qkv_w, qkv_b, dense_w, dense_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  BloomConfig config_;
  c10::Device device_;
  at::ScalarType dtype_;
  at::Tensor wte_, emb_ln_w_, emb_ln_b_, ln_f_w_, ln_f_b_, lm_head_;
  std::vector<Layer> layers_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  at::Tensor slopes_;  // [n_head] float32 ALiBi slopes, as build_alibi_tensor computes them
  // lm_head transposed to [D, V] for decoding (made on first use, fast mode, lm_heads up to 512 MB): a [1, D] x [D, V]
  // product streams the weights contiguously and runs ~1.7x faster than x · W^T on this CPU. Guarded by the model lock.
  mutable at::Tensor lm_head_t_;
};

// Exact mode computes transformers' op graph (bit-identical to PEFT on one thread). The default fast mode drops work
// that cannot change the result beyond rounding (lm_head and cross-entropy only on rows with a target, no
// vocab-sized tensors kept for backward) and stays within 1e-5 of it.
void set_exact_mode(bool exact);
bool exact_mode();

// ALiBi slopes exactly as transformers' build_alibi_tensor (float32 base, int32 powers, torch.pow).
at::Tensor alibi_slopes(int64_t n_head);

// BLOOM's tanh GELU. Its gradient is bloom_gelu_back's formula (transformers 5.x uses the custom autograd Function
// in train and eval mode alike); autograd through the forward would differ in the last bits.
at::Tensor bloom_gelu(const at::Tensor& x);

// Parses "float32" | "float16" | "bfloat16" | "float64" (ERR_INVALID_INPUT otherwise).
at::ScalarType parse_dtype(const std::string& name);
std::string dtype_name(at::ScalarType t);
// Parses "cpu" | "cuda" | "cuda:N" and checks the device exists (ERR_DEVICE explains a CPU-only libtorch).
c10::Device parse_device(const std::string& name);

}  // namespace peft_node
