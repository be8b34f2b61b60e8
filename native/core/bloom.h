// BloomForCausalLM in libtorch: the forward of transformers' modeling_bloom.py, op for op (peft-reference §4), with
// optional past key/values in front of the sequence (what PEFT's prefix tuning passes down, §3). The model knows
// nothing of PEFT. Base weights are frozen: they never require grad, so a backward pass only reaches the prefix.
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

// transformers' attn_implementation: which kernel computes attention.
enum class AttnImplementation {
  Eager,  // baddbmm(ALiBi, q, kᵀ) + mask, float32 softmax, bmm: transformers' BloomAttention, bit for bit
  Sdpa,   // one at::scaled_dot_product_attention with ALiBi + mask as its bias (float32 models; otherwise eager)
};
AttnImplementation parse_attn_implementation(const std::string& name);  // "eager" | "sdpa"
std::string attn_implementation_name(AttnImplementation impl);

// How the model computes. Every switch that changes rounding or memory is here, passed with each call.
struct ExecutionOptions {
  AttnImplementation attn_implementation = AttnImplementation::Eager;
  // transformers' op graph everywhere (bit-identical to PEFT on one thread): full logits before the loss, eager
  // attention, no transposed lm_head. Otherwise work that cannot change the result beyond rounding is skipped.
  bool exact = false;
  // Decoding multiplies by a [D, V] copy of lm_head when it takes at most this many bytes (0: never). The copy
  // streams the weights contiguously (bench/NOTES.md: +17% tok/s on bloom-small); past the limit memory matters more.
  int64_t transposed_lm_head_max_bytes = int64_t{512} << 20;
};

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

  // past_key_values: [B, P, 2·L·D] in PEFT's flat layout ((layer*2+kv)*n_head+head)*head_dim+d, any floating dtype
  // (cast to the model dtype, differentiably), or undefined.
  ForwardOutputs forward(const ForwardInputs& in, const at::Tensor& past_key_values, bool need_logits,
                         const ExecutionOptions& options) const;

  // One incremental step over a preallocated KV cache (generation). ids [B, t] are the new tokens at cache positions
  // [past, past + t); mask [B, past + t] is the float mask of every position so far (prefix ones included);
  // key_cache / value_cache hold one [B, H, capacity, head_dim] tensor per layer, positions [0, past) already filled.
  // Writes the new keys/values and returns the float32 logits of the last position, [B, V].
  at::Tensor step_logits(const at::Tensor& ids, const at::Tensor& mask, int64_t past, std::vector<at::Tensor>& key_cache,
                         std::vector<at::Tensor>& value_cache, const ExecutionOptions& options) const;

  // Parameters under transformers' names (transformer.word_embeddings.weight, transformer.h.0...), tied lm_head
  // counted once, in module registration order.
  const std::vector<std::pair<std::string, at::Tensor>>& named_parameters() const { return params_; }
  int64_t num_parameters() const;
  // Call after writing into a parameter (load_state_dict): drops caches derived from the weights.
  void weights_changed() { lm_head_transposed_ = at::Tensor(); }

 private:
  struct Linear {
    at::Tensor weight, bias;
  };
  struct LayerNorm {
    at::Tensor weight, bias;
  };
  // One BloomBlock, under transformers' module names.
  struct Block {
    LayerNorm input_layernorm;
    Linear query_key_value, dense;  // self_attention
    LayerNorm post_attention_layernorm;
    Linear dense_h_to_4h, dense_4h_to_h;  // mlp
  };
  // What every layer's attention adds to its scores: ALiBi and the causal + padding mask.
  struct AttentionBias {
    at::Tensor alibi;        // [B·H, 1, S] in the model dtype
    at::Tensor causal_mask;  // [B, 1, T, S]: 0 where a query may look, the dtype's lowest value elsewhere
    at::Tensor fused;        // [B, H, T, S] = alibi + causal_mask, for SDPA only
  };
  // Turns a layer's new keys/values [B, H, T, head_dim] into all of them (earlier positions first).
  using PastKeyValuesUpdate = std::function<void(int64_t layer, at::Tensor& keys, at::Tensor& values)>;

  at::Tensor layer_norm(const at::Tensor& x, const LayerNorm& norm) const;
  at::Tensor self_attention(const Block& block, int64_t layer, const at::Tensor& x, const AttentionBias& bias,
                            const PastKeyValuesUpdate& update, bool use_sdpa) const;
  at::Tensor mlp(const Block& block, const at::Tensor& x) const;
  AttentionBias attention_bias(const at::Tensor& mask, int64_t past, int64_t seq_len, bool use_sdpa) const;
  // Embedding, every block and ln_f, for ids at cache positions [past, past + T) over the mask of all positions.
  at::Tensor hidden_states(const at::Tensor& ids, const at::Tensor& mask, int64_t past,
                           const PastKeyValuesUpdate& update, const ExecutionOptions& options) const;
  at::Tensor lm_head_logits(const at::Tensor& x, const ExecutionOptions& options) const;

  BloomConfig config_;
  c10::Device device_;
  at::ScalarType dtype_;
  at::Tensor word_embeddings_;
  LayerNorm word_embeddings_layernorm_, ln_f_;
  std::vector<Block> blocks_;
  at::Tensor lm_head_;  // [V, D]; the same tensor as word_embeddings_ when tied
  std::vector<std::pair<std::string, at::Tensor>> params_;
  at::Tensor alibi_slopes_;  // [n_head] float32, as build_alibi_tensor computes them
  // lm_head as [D, V] for decoding, made on first use (see ExecutionOptions). Guarded by the model lock.
  mutable at::Tensor lm_head_transposed_;
};

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
