#include "core/bloom.h"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <limits>
#include <map>

#include "core/checkpoint.h"
#include "core/cross_entropy.h"
#include "core/errors.h"
#include "core/safetensors.h"

// Reads top to bottom as the model runs: options, GELU, ALiBi and the mask, attention, MLP, the block and the model,
// the loss, decoding; then loading and argument parsing.

namespace peft_node {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// The most negative finite value of a dtype: what transformers fills masked scores with.
double lowest_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return std::numeric_limits<double>::lowest();
    case at::kHalf: return -65504.0;
    case at::kBFloat16: return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    default: return static_cast<double>(std::numeric_limits<float>::lowest());
  }
}

}  // namespace

AttnImplementation parse_attn_implementation(const std::string& name) {
  if (name == "eager") return AttnImplementation::Eager;
  if (name == "sdpa") return AttnImplementation::Sdpa;
  fail(codes::kInvalidInput, "unknown attn_implementation '" + name + "' (expected eager or sdpa)");
}

std::string attn_implementation_name(AttnImplementation impl) {
  return impl == AttnImplementation::Sdpa ? "sdpa" : "eager";
}

// ---------------------------------------------------------------------------------------------------------------
// GELU. The op order mirrors bloom_gelu_forward / bloom_gelu_back so results agree to the last bit.

static at::Tensor gelu_forward(const at::Tensor& x) {
  return x * 0.5 * (1.0 + at::tanh(x * 0.79788456 * (1 + x * 0.044715 * x)));
}

struct BloomGeluFunction : public torch::autograd::Function<BloomGeluFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    ctx->save_for_backward({x});
    return gelu_forward(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor& g = grad_outputs[0];
    at::Tensor t = at::tanh(x * 0.79788456 * (1 + x * 0.044715 * x));
    at::Tensor ff = x * 0.5 * (at::rsub(t * t, 1) * (x * 0.1070322243 * x + 0.79788456)) + (t + 1) * 0.5;
    return {ff * g};
  }
};

at::Tensor bloom_gelu(const at::Tensor& x) {
  if (x.requires_grad()) return BloomGeluFunction::apply(x);
  return gelu_forward(x);
}

// ---------------------------------------------------------------------------------------------------------------
// ALiBi and the attention mask

at::Tensor alibi_slopes(int64_t n_head) {
  const int64_t cp2 = int64_t{1} << static_cast<int64_t>(std::floor(std::log2(static_cast<double>(n_head))));
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto i32 = at::TensorOptions().dtype(at::kInt);
  const double base = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(cp2)) - 3)));
  at::Tensor slopes = at::pow(at::scalar_tensor(base, f32), at::arange(1, 1 + cp2, i32));
  if (cp2 != n_head) {
    const double extra_base = std::pow(2.0, -std::pow(2.0, -(std::log2(static_cast<double>(2 * cp2)) - 3)));
    const int64_t n_rem = std::min(cp2, n_head - cp2);
    at::Tensor extra = at::pow(at::scalar_tensor(extra_base, f32), at::arange(1, 1 + 2 * n_rem, 2, i32));
    slopes = at::cat({slopes, extra}, 0);
  }
  return slopes;
}

// mask [B, S] (float, prefix ones included) covers every position so far; the queries sit at [past, past + T).
BloomModel::AttentionBias BloomModel::attention_bias(const at::Tensor& mask, int64_t past, int64_t seq_len,
                                                     bool use_sdpa) const {
  const int64_t batch = mask.size(0), total = mask.size(1), n_head = config_.n_head;
  AttentionBias bias;
  // ALiBi positions come from the mask's cumsum (build_alibi_tensor), so left padding is skipped.
  at::Tensor positions = (mask.cumsum(-1) - 1) * mask;
  bias.alibi = (alibi_slopes_.view({1, n_head, 1}) * positions.unsqueeze(1)).reshape({batch * n_head, 1, total}).to(dtype_);
  // Query i (cache position past + i) sees key j when j <= past + i and the mask keeps j.
  auto i64 = at::TensorOptions().dtype(at::kLong).device(device_);
  at::Tensor query_pos = at::arange(seq_len, i64).view({seq_len, 1}) + past;
  at::Tensor key_pos = at::arange(total, i64).view({1, total});
  at::Tensor allowed = (key_pos <= query_pos).unsqueeze(0) & (mask.unsqueeze(1) != 0);  // [B, T, S]
  bias.causal_mask = at::zeros({batch, 1, seq_len, total}, mask.options().dtype(dtype_))
                         .masked_fill_(allowed.logical_not().unsqueeze(1), lowest_of(dtype_));
  if (use_sdpa) bias.fused = bias.alibi.view({batch, n_head, 1, total}) + bias.causal_mask;
  return bias;
}

// ---------------------------------------------------------------------------------------------------------------
// Attention, MLP, block

at::Tensor BloomModel::layer_norm(const at::Tensor& x, const LayerNorm& norm) const {
  return at::layer_norm(x, {config_.hidden_size}, norm.weight, norm.bias, config_.layer_norm_epsilon);
}

at::Tensor BloomModel::self_attention(const Block& block, int64_t layer, const at::Tensor& x, const AttentionBias& bias,
                                      const PastKeyValuesUpdate& update, bool use_sdpa) const {
  const int64_t batch = x.size(0), seq_len = x.size(1);
  const int64_t hidden = config_.hidden_size, n_head = config_.n_head, head_dim = config_.head_dim();
  // Fused query/key/value, laid out [.., head, (q | k | v), head_dim] as BloomAttention._reshape does.
  at::Tensor qkv = at::linear(x, block.query_key_value.weight, block.query_key_value.bias)
                       .view({batch, seq_len, n_head, 3, head_dim});
  at::Tensor query = qkv.select(3, 0).transpose(1, 2);
  at::Tensor keys = qkv.select(3, 1).transpose(1, 2);
  at::Tensor values = qkv.select(3, 2).transpose(1, 2);
  update(layer, keys, values);  // now [B, H, S, head_dim]: the past first
  const int64_t total = keys.size(2);
  const double inv_norm = 1.0 / std::sqrt(static_cast<double>(head_dim));

  at::Tensor context;
  if (use_sdpa) {
    context = at::scaled_dot_product_attention(query, keys, values, bias.fused, 0.0, false, inv_norm);
  } else {
    // transformers computes softmax in float32 for every dtype; a float64 model keeps float64 so that
    // finite-difference checks see float64 precision end to end.
    const at::ScalarType softmax_dtype = dtype_ == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor q = query.reshape({batch * n_head, seq_len, head_dim});
    at::Tensor k_t = keys.reshape({batch * n_head, total, head_dim}).transpose(-1, -2);
    at::Tensor v = values.reshape({batch * n_head, total, head_dim});
    at::Tensor scores = at::baddbmm(bias.alibi, q, k_t, /*beta=*/1.0, /*alpha=*/inv_norm);
    at::Tensor probs = at::softmax(scores.view({batch, n_head, seq_len, total}) + bias.causal_mask, -1, softmax_dtype)
                           .to(dtype_);
    context = at::bmm(probs.view({batch * n_head, seq_len, total}), v).view({batch, n_head, seq_len, head_dim});
  }
  context = context.permute({0, 2, 1, 3}).reshape({batch, seq_len, hidden});
  return at::linear(context, block.dense.weight, block.dense.bias);
}

at::Tensor BloomModel::mlp(const Block& block, const at::Tensor& x) const {
  at::Tensor h = bloom_gelu(at::linear(x, block.dense_h_to_4h.weight, block.dense_h_to_4h.bias));
  return at::linear(h, block.dense_4h_to_h.weight, block.dense_4h_to_h.bias);
}

// ---------------------------------------------------------------------------------------------------------------
// The model

at::Tensor BloomModel::hidden_states(const at::Tensor& ids, const at::Tensor& mask, int64_t past,
                                     const PastKeyValuesUpdate& update, const ExecutionOptions& options) const {
  // SDPA softmaxes in the input dtype: transformers' float32 softmax is kept for half types and float64.
  const bool use_sdpa =
      !options.exact && options.attn_implementation == AttnImplementation::Sdpa && dtype_ == at::kFloat;
  const AttentionBias bias = attention_bias(mask, past, ids.size(1), use_sdpa);
  const bool post_ln = config_.apply_residual_connection_post_layernorm;

  at::Tensor x = layer_norm(at::embedding(word_embeddings_, ids), word_embeddings_layernorm_);
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    const Block& block = blocks_[l];
    at::Tensor ln1 = layer_norm(x, block.input_layernorm);
    at::Tensor attended = self_attention(block, l, ln1, bias, update, use_sdpa) + (post_ln ? ln1 : x);
    at::Tensor ln2 = layer_norm(attended, block.post_attention_layernorm);
    x = mlp(block, ln2) + (post_ln ? ln2 : attended);
  }
  return x;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward and loss

void BloomModel::validate(const ForwardInputs& in) const {
  const at::Tensor& ids = in.input_ids;
  if (!ids.defined() || ids.dim() != 2 || ids.size(0) < 1 || ids.size(1) < 1)
    fail(codes::kInvalidInput, "input_ids must be a non-empty 2-D [batch, seq_len] tensor");
  if (ids.scalar_type() != at::kLong) fail(codes::kInvalidInput, "input_ids must be int64");
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= config_.vocab_size)
    fail(codes::kInvalidInput, "input_ids contain token id " + std::to_string(lo < 0 ? lo : hi) +
                                   ", outside [0, vocab_size=" + std::to_string(config_.vocab_size) + ")");
  if (in.attention_mask.defined()) {
    if (in.attention_mask.sizes() != ids.sizes())
      fail(codes::kInvalidInput, "attention_mask has shape " + shape_str(in.attention_mask.sizes()) +
                                     " but input_ids has shape " + shape_str(ids.sizes()));
    at::Tensor m = in.attention_mask;
    if (!((m == 0) | (m == 1)).all().item<bool>())
      fail(codes::kInvalidInput, "attention_mask must contain only 0 and 1");
  }
  if (in.labels.defined()) {
    if (in.labels.sizes() != ids.sizes())
      fail(codes::kInvalidInput, "labels have shape " + shape_str(in.labels.sizes()) + " but input_ids has shape " +
                                     shape_str(ids.sizes()));
    const at::Tensor& y = in.labels;
    at::Tensor bad = ((y < 0) & (y != -100)) | (y >= config_.vocab_size);
    if (bad.any().item<bool>()) {
      int64_t v = y.masked_select(bad)[0].item<int64_t>();
      fail(codes::kInvalidInput, "labels contain " + std::to_string(v) + ", outside [0, vocab_size=" +
                                     std::to_string(config_.vocab_size) + ") and not the ignore index -100");
    }
  }
  if (in.num_items_in_batch && *in.num_items_in_batch <= 0)
    fail(codes::kInvalidInput, "num_items_in_batch must be a positive integer");
}

ForwardOutputs BloomModel::forward(const ForwardInputs& in, const at::Tensor& past_key_values, bool need_logits,
                                   const ExecutionOptions& options) const {
  validate(in);
  const int64_t batch = in.input_ids.size(0), seq_len = in.input_ids.size(1);
  const int64_t hidden = config_.hidden_size, n_head = config_.n_head, n_layer = config_.n_layer;
  const at::Tensor ids = in.input_ids.to(device_);

  // past_key_values [B, P, 2·L·D] -> [2L, B, H, P, head_dim]: layer l's keys are kv[2l], its values kv[2l+1].
  int64_t past = 0;
  at::Tensor kv;
  if (past_key_values.defined()) {
    if (past_key_values.dim() != 3 || past_key_values.size(0) != batch || past_key_values.size(2) != 2 * n_layer * hidden)
      fail(codes::kShapeMismatch, "past_key_values have shape " + shape_str(past_key_values.sizes()) + ", expected [" +
                                      std::to_string(batch) + ", num_virtual_tokens, " +
                                      std::to_string(2 * n_layer * hidden) + "]");
    past = past_key_values.size(1);
    kv = past_key_values.to(device_, dtype_)
             .view({batch, past, n_layer * 2, n_head, config_.head_dim()})
             .permute({2, 0, 3, 1, 4});
  }

  // PEFT prepends P ones (float) to the attention mask.
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
  at::Tensor mask;
  if (in.attention_mask.defined()) {
    at::Tensor m = in.attention_mask.to(device_).to(at::kFloat);
    mask = past > 0 ? at::cat({at::ones({batch, past}, f32), m}, 1) : m;
  } else {
    mask = at::ones({batch, past + seq_len}, f32);
  }
  at::Tensor x = hidden_states(ids, mask, past, [&](int64_t l, at::Tensor& keys, at::Tensor& values) {
    if (past > 0) {  // DynamicLayer.update: the past comes first
      keys = at::cat({kv[2 * l], keys}, 2);
      values = at::cat({kv[2 * l + 1], values}, 2);
    }
  }, options);
  x = layer_norm(x, ln_f_);

  ForwardOutputs out;
  if (!need_logits && !in.labels.defined()) return out;
  if (!need_logits && !options.exact) {
    // Training: lm_head + cross-entropy only where a target exists, no [B·T, V] logits kept for backward.
    at::Tensor labels = in.labels.to(device_);
    at::Tensor shifted = at::constant_pad_nd(labels, {0, 1}, -100).slice(1, 1).reshape(-1);
    at::Tensor rows = (shifted != -100).nonzero().squeeze(1);
    at::Tensor targets_hidden = x.reshape({-1, hidden}).index_select(0, rows);
    const double denominator = in.num_items_in_batch ? static_cast<double>(*in.num_items_in_batch)
                                                     : static_cast<double>(rows.size(0));
    out.loss = linear_cross_entropy(targets_hidden, lm_head_, shifted.index_select(0, rows), denominator);
    return out;
  }
  at::Tensor logits = at::linear(x, lm_head_);
  if (in.labels.defined()) {
    // transformers' ForCausalLMLoss: pad labels with -100 on the right, shift left by one, CE over all B·T rows.
    at::Tensor labels = in.labels.to(device_);
    at::Tensor shifted = at::constant_pad_nd(labels, {0, 1}, -100).slice(1, 1).contiguous().view(-1);
    // logits.float() as transformers does; a float64 model keeps float64 (used for finite-difference checks).
    at::Tensor flat = (logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat)).view({-1, logits.size(-1)});
    if (in.num_items_in_batch) {
      at::Tensor sum = at::cross_entropy_loss(flat, shifted, {}, at::Reduction::Sum, -100);
      out.loss = sum / at::scalar_tensor(*in.num_items_in_batch, at::TensorOptions().dtype(at::kLong).device(device_));
    } else {
      out.loss = at::cross_entropy_loss(flat, shifted, {}, at::Reduction::Mean, -100);
    }
  }
  if (need_logits) out.logits = logits;
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding

at::Tensor BloomModel::step_logits(const at::Tensor& ids_in, const at::Tensor& mask, int64_t past,
                                   std::vector<at::Tensor>& key_cache, std::vector<at::Tensor>& value_cache,
                                   const ExecutionOptions& options) const {
  const int64_t seq_len = ids_in.size(1), total = past + seq_len;
  const at::Tensor ids = ids_in.to(device_);
  // The same graph as forward(), with keys/values written into the cache instead of concatenated.
  at::Tensor x = hidden_states(ids, mask, past, [&](int64_t l, at::Tensor& keys, at::Tensor& values) {
    key_cache[l].narrow(2, past, seq_len).copy_(keys);
    value_cache[l].narrow(2, past, seq_len).copy_(values);
    keys = key_cache[l].narrow(2, 0, total);
    values = value_cache[l].narrow(2, 0, total);
  }, options);
  x = layer_norm(x.narrow(1, seq_len - 1, 1), ln_f_).select(1, 0);
  return lm_head_logits(x, options);
}

at::Tensor BloomModel::lm_head_logits(const at::Tensor& x, const ExecutionOptions& options) const {
  const bool transposed = !options.exact && lm_head_.numel() * lm_head_.element_size() <= options.transposed_lm_head_max_bytes;
  if (!transposed) return at::linear(x, lm_head_).to(at::kFloat);
  if (!lm_head_transposed_.defined()) lm_head_transposed_ = lm_head_.t().contiguous();
  return at::mm(x, lm_head_transposed_).to(at::kFloat);
}

// ---------------------------------------------------------------------------------------------------------------
// Loading

std::unique_ptr<BloomModel> BloomModel::from_pretrained(const std::string& dir, c10::Device device,
                                                        at::ScalarType dtype) {
  BloomConfig config = BloomConfig::from_dir(dir);
  auto weights = load_checkpoint_tensors(dir);
  return std::make_unique<BloomModel>(std::move(config), weights, device, dtype, dir);
}

BloomModel::BloomModel(BloomConfig config, const std::vector<std::pair<std::string, at::Tensor>>& weights,
                       c10::Device device, at::ScalarType dtype, const std::string& source)
    : config_(std::move(config)), device_(device), dtype_(dtype) {
  // Checkpoints name weights with or without the "transformer." prefix (bigscience releases have none).
  std::map<std::string, at::Tensor> by_name;
  for (const auto& [raw, t] : weights) {
    std::string name = raw.rfind("transformer.", 0) == 0 ? raw.substr(12) : raw;
    by_name[name] = t;
  }
  const int64_t vocab = config_.vocab_size, hidden = config_.hidden_size;
  auto take = [&](const std::string& name, std::vector<int64_t> shape) -> at::Tensor {
    auto it = by_name.find(name);
    if (it == by_name.end())
      fail(codes::kWeightMissing, "weight 'transformer." + name + "' is missing from the checkpoint in " + source);
    const at::Tensor& t = it->second;
    if (t.sizes() != at::IntArrayRef(shape))
      fail(codes::kShapeMismatch, "weight 'transformer." + name + "' in " + source + " has shape " +
                                      shape_str(t.sizes()) + ", expected " + shape_str(shape) + " from config.json");
    if (!at::isFloatingType(t.scalar_type()))
      fail(codes::kShapeMismatch, "weight 'transformer." + name + "' in " + source + " has non-float dtype " +
                                      std::string(c10::toString(t.scalar_type())));
    // .to() is a no-op for a CPU tensor already in the requested dtype: the weight stays a view of the mmap.
    at::Tensor out = t.to(device_, dtype_);
    params_.emplace_back("transformer." + name, out);
    return out;
  };
  auto take_layer_norm = [&](const std::string& name) {
    LayerNorm norm;
    norm.weight = take(name + ".weight", {hidden});
    norm.bias = take(name + ".bias", {hidden});
    return norm;
  };
  auto take_linear = [&](const std::string& name, int64_t out_features, int64_t in_features) {
    Linear linear;
    linear.weight = take(name + ".weight", {out_features, in_features});
    linear.bias = take(name + ".bias", {out_features});
    return linear;
  };
  word_embeddings_ = take("word_embeddings.weight", {vocab, hidden});
  word_embeddings_layernorm_ = take_layer_norm("word_embeddings_layernorm");
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    Block block;
    block.input_layernorm = take_layer_norm(p + "input_layernorm");
    block.query_key_value = take_linear(p + "self_attention.query_key_value", 3 * hidden, hidden);
    block.dense = take_linear(p + "self_attention.dense", hidden, hidden);
    block.post_attention_layernorm = take_layer_norm(p + "post_attention_layernorm");
    block.dense_h_to_4h = take_linear(p + "mlp.dense_h_to_4h", 4 * hidden, hidden);
    block.dense_4h_to_h = take_linear(p + "mlp.dense_4h_to_h", hidden, 4 * hidden);
    blocks_.push_back(std::move(block));
  }
  ln_f_ = take_layer_norm("ln_f");
  if (config_.tie_word_embeddings) {
    lm_head_ = word_embeddings_;  // tied: one tensor, counted once
  } else {
    auto it = by_name.find("lm_head.weight");
    if (it == by_name.end())
      fail(codes::kWeightMissing, "weight 'lm_head.weight' is missing from " + source +
                                      " (config.json sets tie_word_embeddings: false)");
    if (it->second.sizes() != at::IntArrayRef({vocab, hidden}))
      fail(codes::kShapeMismatch, "weight 'lm_head.weight' in " + source + " has shape " +
                                      shape_str(it->second.sizes()) + ", expected " + shape_str({vocab, hidden}));
    lm_head_ = it->second.to(device_, dtype_);
    params_.emplace_back("lm_head.weight", lm_head_);
  }
  alibi_slopes_ = alibi_slopes(config_.n_head).to(device_);
}

int64_t BloomModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : params_) n += t.numel();
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Arguments

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "float16" || name == "fp16" || name == "half") return at::kHalf;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float64" || name == "fp64" || name == "double") return at::kDouble;
  fail(codes::kInvalidInput, "unknown dtype '" + name + "' (expected float32, float16, bfloat16 or float64)");
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    default: return c10::toString(t);
  }
}

c10::Device parse_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    int64_t index = 0;
    if (name.size() > 5) {
      const std::string idx = name.substr(5);
      if (idx.empty() || idx.size() > 3 || idx.find_first_not_of("0123456789") != std::string::npos)
        fail(codes::kDevice, "invalid device '" + name + "' (expected cpu, cuda or cuda:N)");
      index = std::stoll(idx);
    }
    const auto& hooks = at::detail::getCUDAHooks();
    if (!hooks.hasCUDA())
      fail(codes::kDevice, "device '" + name + "' requested, but the libtorch this addon was built against has no "
                           "usable CUDA (a CPU-only libtorch, or no GPU/driver). Use device 'cpu', or build the CUDA "
                           "variant against a CUDA libtorch.");
    const int64_t count = hooks.deviceCount();
    if (index >= count)
      fail(codes::kDevice, "device '" + name + "' requested, but only " + std::to_string(count) + " CUDA device(s) exist");
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  fail(codes::kDevice, "invalid device '" + name + "' (expected cpu, cuda or cuda:N)");
}

}  // namespace peft_node
