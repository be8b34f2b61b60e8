#include "core/bloom.h"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <cstdlib>
#include <cmath>
#include <limits>
#include <map>

#include "core/checkpoint.h"
#include "core/cross_entropy.h"
#include "core/errors.h"
#include "core/safetensors.h"

namespace peft_node {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

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

static std::atomic<bool> g_exact_mode{false};
// Fused attention (at::scaled_dot_product_attention) is opt-in: PEFT_NODE_SDPA=1. Measured on bloom-small (batch
// 4x256, 2 cores) it saved ~5% of a train step, but moved the final prefix MLP of a golden Trainer run to 1.5e-4 of
// PEFT's (Adam amplifies the reordered attention's rounding), past the 1e-4 the project holds fast mode to.
static bool sdpa_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("PEFT_NODE_SDPA");
    return v && std::string(v) == "1";
  }();
  return on;
}
void set_exact_mode(bool exact) { g_exact_mode.store(exact); }
bool exact_mode() { return g_exact_mode.load(); }

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

// ---------------------------------------------------------------------------------------------------------------
// Loading

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

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
  const int64_t V = config_.vocab_size, D = config_.hidden_size;
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
  wte_ = take("word_embeddings.weight", {V, D});
  emb_ln_w_ = take("word_embeddings_layernorm.weight", {D});
  emb_ln_b_ = take("word_embeddings_layernorm.bias", {D});
  for (int64_t l = 0; l < config_.n_layer; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    Layer L;
    L.ln1_w = take(p + "input_layernorm.weight", {D});
    L.ln1_b = take(p + "input_layernorm.bias", {D});
    L.qkv_w = take(p + "self_attention.query_key_value.weight", {3 * D, D});
    L.qkv_b = take(p + "self_attention.query_key_value.bias", {3 * D});
    L.dense_w = take(p + "self_attention.dense.weight", {D, D});
    L.dense_b = take(p + "self_attention.dense.bias", {D});
    L.ln2_w = take(p + "post_attention_layernorm.weight", {D});
    L.ln2_b = take(p + "post_attention_layernorm.bias", {D});
    L.fc1_w = take(p + "mlp.dense_h_to_4h.weight", {4 * D, D});
    L.fc1_b = take(p + "mlp.dense_h_to_4h.bias", {4 * D});
    L.fc2_w = take(p + "mlp.dense_4h_to_h.weight", {D, 4 * D});
    L.fc2_b = take(p + "mlp.dense_4h_to_h.bias", {D});
    layers_.push_back(std::move(L));
  }
  ln_f_w_ = take("ln_f.weight", {D});
  ln_f_b_ = take("ln_f.bias", {D});
  if (config_.tie_word_embeddings) {
    lm_head_ = wte_;  // tied: one tensor, counted once
  } else {
    auto it = by_name.find("lm_head.weight");
    if (it == by_name.end())
      fail(codes::kWeightMissing, "weight 'lm_head.weight' is missing from " + source +
                                      " (config.json sets tie_word_embeddings: false)");
    if (it->second.sizes() != at::IntArrayRef({V, D}))
      fail(codes::kShapeMismatch, "weight 'lm_head.weight' in " + source + " has shape " +
                                      shape_str(it->second.sizes()) + ", expected " + shape_str({V, D}));
    lm_head_ = it->second.to(device_, dtype_);
    params_.emplace_back("lm_head.weight", lm_head_);
  }
  slopes_ = alibi_slopes(config_.n_head).to(device_);
}

int64_t BloomModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : params_) n += t.numel();
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Forward

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

static double lowest_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return std::numeric_limits<double>::lowest();
    case at::kHalf: return -65504.0;
    case at::kBFloat16: return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    default: return static_cast<double>(std::numeric_limits<float>::lowest());
  }
}

at::Tensor BloomModel::run_blocks(const at::Tensor& ids, const at::Tensor& m2, int64_t past,
                                  const std::function<void(int64_t, at::Tensor&, at::Tensor&)>& past_kv) const {
  const int64_t B = ids.size(0), T = ids.size(1), S = m2.size(1);
  const int64_t D = config_.hidden_size, H = config_.n_head, hd = D / H, NL = config_.n_layer;
  const double eps = config_.layer_norm_epsilon;
  at::Tensor pos = (m2.cumsum(-1) - 1) * m2;
  at::Tensor alibi = (slopes_.view({1, H, 1}) * pos.unsqueeze(1)).reshape({B * H, 1, S}).to(dtype_);

  // Additive causal mask: query i (cache position past+i) sees key j when j <= past+i and m2[b, j] != 0.
  auto i64 = at::TensorOptions().dtype(at::kLong).device(device_);
  at::Tensor qi = at::arange(T, i64).view({T, 1}) + past;
  at::Tensor kj = at::arange(S, i64).view({1, S});
  at::Tensor allowed = (kj <= qi).unsqueeze(0) & (m2.unsqueeze(1) != 0);  // [B, T, S]
  at::Tensor addmask = at::zeros({B, 1, T, S}, m2.options().dtype(dtype_))
                           .masked_fill_(allowed.logical_not().unsqueeze(1), lowest_of(dtype_));

  const double inv_norm = 1.0 / std::sqrt(static_cast<double>(hd));
  // transformers computes softmax in float32 for every dtype; a float64 model keeps float64 so that finite-difference
  // checks see float64 precision end to end.
  const at::ScalarType softmax_dtype = dtype_ == at::kDouble ? at::kDouble : at::kFloat;
  // SDPA softmaxes in the input dtype; transformers' float32 softmax is kept for half types and float64 for FD checks.
  const bool use_sdpa = !exact_mode() && dtype_ == at::kFloat && sdpa_enabled();
  at::Tensor bias;
  if (use_sdpa) bias = alibi.view({B, H, 1, S}) + addmask;  // [B, H, T, S]
  at::Tensor x = at::embedding(wte_, ids);
  x = at::layer_norm(x, {D}, emb_ln_w_, emb_ln_b_, eps);
  for (int64_t l = 0; l < NL; ++l) {
    const Layer& L = layers_[l];
    at::Tensor ln = at::layer_norm(x, {D}, L.ln1_w, L.ln1_b, eps);
    at::Tensor residual = config_.apply_residual_connection_post_layernorm ? ln : x;
    at::Tensor qkv = at::linear(ln, L.qkv_w, L.qkv_b).view({B, T, H, 3, hd});
    at::Tensor q = qkv.select(3, 0).transpose(1, 2);
    at::Tensor k = qkv.select(3, 1).transpose(1, 2);
    at::Tensor v = qkv.select(3, 2).transpose(1, 2);
    past_kv(l, k, v);  // k, v become [B, H, S, hd]: earlier positions first
    at::Tensor ctx;
    if (use_sdpa) {
      // Fast mode: one fused attention kernel with ALiBi + mask as its additive bias.
      ctx = at::scaled_dot_product_attention(q, k, v, bias, 0.0, false, inv_norm)
                .permute({0, 2, 1, 3})
                .reshape({B, T, D});
    } else {
      at::Tensor qf = q.reshape({B * H, T, hd});
      at::Tensor kf = k.reshape({B * H, S, hd}).transpose(-1, -2);
      at::Tensor vf = v.reshape({B * H, S, hd});
      at::Tensor scores = at::baddbmm(alibi, qf, kf, /*beta=*/1.0, /*alpha=*/inv_norm);
      at::Tensor probs = at::softmax(scores.view({B, H, T, S}) + addmask, -1, softmax_dtype).to(dtype_);
      ctx = at::bmm(probs.view({B * H, T, S}), vf).view({B, H, T, hd}).permute({0, 2, 1, 3}).reshape({B, T, D});
    }
    at::Tensor a = at::linear(ctx, L.dense_w, L.dense_b) + residual;
    at::Tensor ln2 = at::layer_norm(a, {D}, L.ln2_w, L.ln2_b, eps);
    at::Tensor residual2 = config_.apply_residual_connection_post_layernorm ? ln2 : a;
    at::Tensor h = bloom_gelu(at::linear(ln2, L.fc1_w, L.fc1_b));
    x = at::linear(h, L.fc2_w, L.fc2_b) + residual2;
  }
  return x;
}

ForwardOutputs BloomModel::forward(const ForwardInputs& in, const at::Tensor& prefix_raw, bool need_logits) const {
  validate(in);
  const int64_t B = in.input_ids.size(0), T = in.input_ids.size(1);
  const int64_t D = config_.hidden_size, H = config_.n_head, hd = D / H, NL = config_.n_layer;
  const double eps = config_.layer_norm_epsilon;
  const at::Tensor ids = in.input_ids.to(device_);

  // Prefix keys/values: raw [B, P, 2·L·D] -> [2L, B, H, P, hd]; layer l uses kv[2l] (keys) and kv[2l+1] (values).
  int64_t P = 0;
  at::Tensor kv;
  if (prefix_raw.defined()) {
    if (prefix_raw.dim() != 3 || prefix_raw.size(0) != B || prefix_raw.size(2) != 2 * NL * D)
      fail(codes::kShapeMismatch, "prefix has shape " + shape_str(prefix_raw.sizes()) + ", expected [" +
                                      std::to_string(B) + ", num_virtual_tokens, " + std::to_string(2 * NL * D) + "]");
    P = prefix_raw.size(1);
    kv = prefix_raw.to(device_, dtype_).view({B, P, NL * 2, H, hd}).permute({2, 0, 3, 1, 4});
  }
  const int64_t S = P + T;

  // PEFT prepends P ones (float) to the mask; ALiBi positions come from its cumsum, so left padding is skipped.
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
  at::Tensor m2;
  if (in.attention_mask.defined()) {
    at::Tensor m = in.attention_mask.to(device_).to(at::kFloat);
    m2 = P > 0 ? at::cat({at::ones({B, P}, f32), m}, 1) : m;
  } else {
    m2 = at::ones({B, S}, f32);
  }
  at::Tensor x = run_blocks(ids, m2, P, [&](int64_t l, at::Tensor& k, at::Tensor& v) {
    if (P > 0) {  // DynamicLayer.update: the prefix comes first
      k = at::cat({kv[2 * l], k}, 2);
      v = at::cat({kv[2 * l + 1], v}, 2);
    }
  });
  x = at::layer_norm(x, {D}, ln_f_w_, ln_f_b_, eps);

  ForwardOutputs out;
  if (!need_logits && !in.labels.defined()) return out;
  if (!need_logits && !exact_mode()) {
    // Training path: lm_head + cross-entropy only where a target exists, no [B·T, V] logits kept for backward.
    at::Tensor labels = in.labels.to(device_);
    at::Tensor shifted = at::constant_pad_nd(labels, {0, 1}, -100).slice(1, 1).reshape(-1);
    at::Tensor rows = (shifted != -100).nonzero().squeeze(1);
    at::Tensor hidden = x.reshape({-1, D}).index_select(0, rows);
    const double denom = in.num_items_in_batch ? static_cast<double>(*in.num_items_in_batch)
                                               : static_cast<double>(rows.size(0));
    out.loss = linear_cross_entropy(hidden, lm_head_, shifted.index_select(0, rows), denom);
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

at::Tensor BloomModel::step_logits(const at::Tensor& ids_in, const at::Tensor& m2, int64_t past,
                                   std::vector<at::Tensor>& k_cache, std::vector<at::Tensor>& v_cache) const {
  const int64_t T = ids_in.size(1), D = config_.hidden_size, S = past + T;
  const double eps = config_.layer_norm_epsilon;
  const at::Tensor ids = ids_in.to(device_);
  // The same graph as forward(), with keys/values written into the cache instead of concatenated.
  at::Tensor x = run_blocks(ids, m2, past, [&](int64_t l, at::Tensor& k, at::Tensor& v) {
    k_cache[l].narrow(2, past, T).copy_(k);
    v_cache[l].narrow(2, past, T).copy_(v);
    k = k_cache[l].narrow(2, 0, S);
    v = v_cache[l].narrow(2, 0, S);
  });
  x = at::layer_norm(x.narrow(1, T - 1, 1), {D}, ln_f_w_, ln_f_b_, eps).select(1, 0);
  // The transposed copy costs V·D more memory while generating: only for lm_heads up to 512 MB (bloom-1b4's 378 MB
  // yes; bloom-560m's 1 GB, vocab 250880, no: there the memory matters more than ~15% of decode speed).
  const bool transposed = !exact_mode() && lm_head_.numel() * lm_head_.element_size() <= (int64_t{512} << 20);
  if (!transposed) return at::linear(x, lm_head_).to(at::kFloat);
  if (!lm_head_t_.defined()) lm_head_t_ = lm_head_.t().contiguous();
  return at::mm(x, lm_head_t_).to(at::kFloat);
}

}  // namespace peft_node
