#include "core/generation.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <limits>
#include <random>

#include "core/errors.h"

namespace peft_node {

namespace {

// HF's RepetitionPenaltyLogitsProcessor over every token so far (prompt and padding included, as HF does).
void repetition_penalty(at::Tensor& scores, const at::Tensor& seen, double penalty) {
  at::Tensor s = scores.gather(1, seen);
  s = at::where(s < 0, s * penalty, s / penalty);
  scores.scatter_(1, seen, s);
}

// TopKLogitsWarper (min_tokens_to_keep 1).
void top_k_filter(at::Tensor& scores, int64_t k) {
  k = std::min<int64_t>(std::max<int64_t>(k, 1), scores.size(-1));
  at::Tensor kth = std::get<0>(at::topk(scores, k)).select(-1, k - 1).unsqueeze(-1);
  scores.masked_fill_(scores < kth, -std::numeric_limits<float>::infinity());
}

// TopPLogitsWarper (min_tokens_to_keep 1).
void top_p_filter(at::Tensor& scores, double top_p) {
  auto [sorted, idx] = at::sort(scores, -1, /*descending=*/false);
  at::Tensor cum = sorted.softmax(-1).cumsum(-1);
  at::Tensor remove_sorted = cum <= (1 - top_p);
  remove_sorted.narrow(-1, remove_sorted.size(-1) - 1, 1).fill_(false);
  at::Tensor remove = remove_sorted.scatter(1, idx, remove_sorted);
  scores.masked_fill_(remove, -std::numeric_limits<float>::infinity());
}

}  // namespace

GenerateOutputs generate(const BloomModel& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                         const at::Tensor& past_key_values, const GenerateOptions& opts,
                         const ExecutionOptions& execution, const std::function<bool(const at::Tensor&)>& on_step) {
  c10::NoGradGuard no_grad;
  ForwardInputs check;
  check.input_ids = input_ids;
  check.attention_mask = attention_mask;
  model.validate(check);
  if (opts.max_new_tokens < 0) fail(codes::kInvalidInput, "max_new_tokens must be >= 0");
  if (opts.do_sample && !(opts.temperature > 0)) fail(codes::kInvalidInput, "temperature must be > 0 when sampling");
  if (!(opts.top_p > 0 && opts.top_p <= 1)) fail(codes::kInvalidInput, "top_p must be in (0, 1]");
  if (!(opts.repetition_penalty > 0)) fail(codes::kInvalidInput, "repetition_penalty must be > 0");

  const BloomConfig& c = model.config();
  const c10::Device dev = model.device();
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const int64_t H = c.n_head, hd = c.head_dim(), NL = c.n_layer;
  const int64_t P = past_key_values.defined() ? past_key_values.size(1) : 0;
  const int64_t capacity = P + T + opts.max_new_tokens;
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(dev);
  auto i64 = at::TensorOptions().dtype(at::kLong);

  std::vector<at::Tensor> k_cache, v_cache;
  auto cache_opts = at::TensorOptions().dtype(model.dtype()).device(dev);
  for (int64_t l = 0; l < NL; ++l) {
    k_cache.push_back(at::empty({B, H, capacity, hd}, cache_opts));
    v_cache.push_back(at::empty({B, H, capacity, hd}, cache_opts));
  }
  if (P > 0) {
    if (past_key_values.dim() != 3 || past_key_values.size(0) != B || past_key_values.size(2) != 2 * NL * c.hidden_size)
      fail(codes::kShapeMismatch, "past_key_values for generate must be [batch, num_virtual_tokens, 2·n_layer·hidden_size]");
    at::Tensor kv = past_key_values.to(dev, model.dtype()).view({B, P, NL * 2, H, hd}).permute({2, 0, 3, 1, 4});
    for (int64_t l = 0; l < NL; ++l) {
      k_cache[l].narrow(2, 0, P).copy_(kv[2 * l]);
      v_cache[l].narrow(2, 0, P).copy_(kv[2 * l + 1]);
    }
  }
  // The mask of every position: P ones, the prompt's mask, then ones for generated tokens.
  at::Tensor mask_all = at::ones({B, capacity}, f32);
  if (attention_mask.defined()) mask_all.narrow(1, P, T).copy_(attention_mask.to(dev).to(at::kFloat));

  std::optional<at::Generator> gen;
  if (opts.do_sample) {
    uint64_t seed = opts.seed ? *opts.seed : std::random_device{}();
    gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  }
  const int64_t pad = opts.pad_token_id >= 0 ? opts.pad_token_id : (opts.eos_token_ids.empty() ? 0 : opts.eos_token_ids[0]);
  at::Tensor eos = at::tensor(opts.eos_token_ids, i64);

  GenerateOutputs out;
  at::Tensor sequences = input_ids.to(at::kCPU).to(at::kLong);
  at::Tensor unfinished = at::ones({B}, i64.dtype(at::kBool));
  at::Tensor step_ids = input_ids;
  int64_t past = P;
  for (int64_t n = 0; n < opts.max_new_tokens; ++n) {
    const int64_t t = step_ids.size(1);
    at::Tensor logits = model.step_logits(step_ids, mask_all.narrow(1, 0, past + t), past, k_cache, v_cache, execution).to(at::kCPU);
    past += t;
    if (opts.repetition_penalty != 1.0) repetition_penalty(logits, sequences, opts.repetition_penalty);
    at::Tensor next;
    if (opts.do_sample) {
      if (opts.temperature != 1.0) logits = logits / opts.temperature;
      if (opts.top_k > 0) top_k_filter(logits, opts.top_k);
      if (opts.top_p < 1.0) top_p_filter(logits, opts.top_p);
      at::Tensor probs = logits.softmax(-1);
      next = at::multinomial(probs, 1, false, gen).squeeze(1);
    } else {
      next = logits.argmax(-1);
    }
    if (opts.output_scores) out.scores.push_back(logits.clone());
    // Finished rows keep producing pad (HF: next * unfinished + pad * (1 - unfinished)).
    next = at::where(unfinished, next, at::full_like(next, pad));
    sequences = at::cat({sequences, next.unsqueeze(1)}, 1);
    if (eos.numel() > 0) unfinished = unfinished & at::isin(next, eos).logical_not();
    step_ids = next.unsqueeze(1);
    const bool keep_going = on_step ? on_step(next) : true;
    if (!unfinished.any().item<bool>() || !keep_going) break;
  }
  out.sequences = sequences;
  return out;
}

}  // namespace peft_node
