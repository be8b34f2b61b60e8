// generate(): HF transformers' greedy search and sampling for BLOOM with an optional PEFT prefix (peft-reference
// §3.1): the prefix is the initial KV cache, the prompt is one prefill step, then one token per step over a
// preallocated cache — the sequence is never recomputed.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "core/bloom.h"

namespace peft_node {

struct GenerateOptions {
  int64_t max_new_tokens = 20;
  bool do_sample = false;
  double temperature = 1.0;
  int64_t top_k = 50;  // HF's default; 0 disables
  double top_p = 1.0;
  double repetition_penalty = 1.0;
  std::vector<int64_t> eos_token_ids;  // a row stops after producing any of these
  int64_t pad_token_id = -1;           // fills finished rows (defaults to the first eos id)
  std::optional<uint64_t> seed;        // sampling generator seed (a fresh nondeterministic one otherwise)
  bool output_scores = false;          // keep each step's processed logits [B, V]
};

struct GenerateOutputs {
  at::Tensor sequences;            // [B, T + n] int64: prompt + new tokens (pad after a row's eos), as HF returns
  std::vector<at::Tensor> scores;  // with output_scores: n tensors [B, V] float32 (after the logits processors)
};

// `on_step` gets each step's new tokens [B] (CPU int64) and returns false to stop early.
GenerateOutputs generate(const BloomModel& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                         const at::Tensor& past_key_values, const GenerateOptions& opts,
                         const ExecutionOptions& execution, const std::function<bool(const at::Tensor&)>& on_step);

}  // namespace peft_node
