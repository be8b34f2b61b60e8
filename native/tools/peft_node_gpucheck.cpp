// GPU check and bench over native/core (plain C++, no Node: GPU machines may not have it). scripts/gpu-check.sh builds
// and runs it; every result is one JSON line on stdout, human notes go to stderr.
//
//   peft_node_gpucheck check <model_dir> [--device cuda] [--batch 2] [--seq 16] [--virtual 4]
//     forward + backward through a prefix on <device> vs the CPU in float32: logits (unpadded positions), loss and the
//     prefix gradient, as normwise relative errors max|a-b| / max|ref|. float32 within 1e-4, bfloat16 within 2e-2 (both
//     against the float32 CPU run); the float32 CPU reference itself within 1e-5 of float64. Exit 1 on a failure.
//
//   peft_node_gpucheck bench [--device cuda] [--dtype bfloat16] [--layers 24] [--hidden 2048] [--heads 16]
//                            [--vocab 250880] [--batch 8] [--seq 512] [--virtual 10] [--warmup 3] [--steps 10]
//                            [--peak-tflops 989]
//     a random model of bloom-1b4's shape (defaults), frozen, and a prefix-tuning step (PrefixEncoder forward, model
//     forward with labels, backward to the prefix, clip_grad_norm_, AdamW): seconds per step, tokens/s, model TFLOP/s
//     and MFU against --peak-tflops (989: H100/H200 SXM dense bf16).
//     FLOPs per token, frozen base weights (no weight gradients, only activation gradients):
//       forward 2·N + 4·L·D·(P+T) (N = L·12·D² + V·D: the matmul weights, lm_head included; attention scores and
//       values over P+T keys), backward ≈ 2·N + 8·L·D·(P+T): in all 4·N + 12·L·D·(P+T).
//
//   peft_node_gpucheck ddp [--device cuda] [--world 2] [--port 29517] [--numel 983040] [--iters 20]
//     data-parallel collectives over native/core's c10d process group (TCPStore + Gloo on loopback; tensors on
//     --device go through host memory): --world processes (forked) average known gradients (exact: each rank's grad
//     is (rank+1)·g, the mean is (W+1)/2·g), broadcast rank 0's parameters and gather a value from every rank; then
//     the median time of averaging a --numel float32 bucket (983040 = bloom-1b4's prefix of 10 virtual tokens).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <tuple>
#include <string>
#include <vector>

#include "core/adamw.h"
#include "core/bloom.h"
#include "core/errors.h"
#include "core/prefix_encoder.h"
#include "core/process_group.h"

#include <algorithm>
#include <sys/wait.h>
#include <unistd.h>

using namespace peft_node;

namespace {

struct Args {
  std::string cmd, model_dir;
  std::map<std::string, std::string> opt;
  std::string get(const std::string& k, const std::string& d) const {
    auto it = opt.find(k);
    return it == opt.end() ? d : it->second;
  }
  int64_t geti(const std::string& k, int64_t d) const { return std::stoll(get(k, std::to_string(d))); }
  double getd(const std::string& k, double d) const { return std::stod(get(k, std::to_string(d))); }
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      const auto eq = s.find('=');
      if (eq != std::string::npos) a.opt[s.substr(2, eq - 2)] = s.substr(eq + 1);
      else if (i + 1 < argc) a.opt[s.substr(2)] = argv[++i];
      else a.opt[s.substr(2)] = "1";
    } else if (a.cmd.empty()) {
      a.cmd = s;
    } else if (a.model_dir.empty()) {
      a.model_dir = s;
    }
  }
  return a;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// max|a-b| / max|ref| over the entries where mask is true (mask undefined: all), in float64 on the CPU.
double rel_err(const at::Tensor& a, const at::Tensor& ref, const at::Tensor& mask = at::Tensor()) {
  at::Tensor x = a.detach().to(at::kCPU, at::kDouble), r = ref.detach().to(at::kCPU, at::kDouble);
  at::Tensor d = (x - r).abs(), m = r.abs();
  if (mask.defined()) {
    at::Tensor keep = mask.to(at::kCPU).to(at::kBool);
    while (keep.dim() < d.dim()) keep = keep.unsqueeze(-1);
    keep = keep.expand_as(d);
    d = d.masked_select(keep);
    m = m.masked_select(keep);
  }
  const double denom = m.max().item<double>();
  const double num = d.max().item<double>();
  if (!std::isfinite(num)) return INFINITY;
  return denom > 0 ? num / denom : num;
}

struct Run {
  at::Tensor logits, loss, grad;
};

// One forward + backward of `model` through a [P, 2·L·D] prefix (its copy on the model's device), on fixed inputs.
Run forward_backward(const BloomModel& model, const at::Tensor& prefix_cpu, const ForwardInputs& in) {
  at::Tensor p = prefix_cpu.detach().to(model.device()).requires_grad_(true);
  const int64_t B = in.input_ids.size(0);
  ForwardOutputs out = model.forward(in, p.unsqueeze(0).expand({B, p.size(0), p.size(1)}), true, ExecutionOptions{});
  out.loss.backward();
  return {out.logits.detach(), out.loss.detach(), p.grad().detach()};
}

int check(const Args& a) {
  if (a.model_dir.empty()) {
    std::fprintf(stderr, "check needs a model dir (e.g. test/fixtures/tiny-bloom)\n");
    return 2;
  }
  const std::string dev_name = a.get("device", "cuda");
  const c10::Device dev = parse_device(dev_name);
  const int64_t B = a.geti("batch", 2), T = a.geti("seq", 16), P = a.geti("virtual", 4);
  std::fprintf(stderr, "check: %s on %s vs cpu (B=%lld T=%lld P=%lld)\n", a.model_dir.c_str(), dev_name.c_str(),
               (long long)B, (long long)T, (long long)P);

  auto ref32 = BloomModel::from_pretrained(a.model_dir, c10::Device(c10::kCPU), at::kFloat);
  const BloomConfig& c = ref32->config();
  manual_seed(1234);
  ForwardInputs in;
  in.input_ids = at::randint(c.vocab_size, {B, T}, at::TensorOptions().dtype(at::kLong));
  in.attention_mask = at::ones({B, T}, at::TensorOptions().dtype(at::kLong));
  if (B > 1) in.attention_mask.index_put_({1, at::indexing::Slice(0, T / 4)}, 0);  // left padding on row 1
  in.labels = in.input_ids.masked_fill(in.attention_mask == 0, -100);
  if (T > 4) in.labels.index_put_({at::indexing::Slice(), at::indexing::Slice(0, 2)}, -100);  // a "prompt"
  at::Tensor prefix = at::randn({P, 2 * c.n_layer * c.hidden_size}, at::TensorOptions().dtype(at::kFloat)) * 0.5;

  Run r32 = forward_backward(*ref32, prefix, in);
  int failures = 0;
  auto report = [&](const std::string& name, const Run& got, const Run& ref, double tol, const std::string& dev) {
    const double el = rel_err(got.logits, ref.logits, in.attention_mask);
    const double ep = rel_err(got.loss, ref.loss);
    const double eg = rel_err(got.grad, ref.grad);
    const bool pass = el <= tol && ep <= tol && eg <= tol;
    if (!pass) ++failures;
    std::printf("{\"check\":\"%s\",\"device\":\"%s\",\"logits\":%.3g,\"loss\":%.3g,\"prefix_grad\":%.3g,\"tol\":%.0e,"
                "\"loss_value\":%.6f,\"pass\":%s}\n",
                name.c_str(), dev.c_str(), el, ep, eg, tol, got.loss.item<double>(), pass ? "true" : "false");
    std::fflush(stdout);
  };
  {
    auto ref64 = BloomModel::from_pretrained(a.model_dir, c10::Device(c10::kCPU), at::kDouble);
    Run r64 = forward_backward(*ref64, prefix.to(at::kDouble), in);
    report("reference float32 vs float64 (cpu)", r32, r64, 1e-5, "cpu");
  }
  for (const auto& [name, dtype, tol] : std::vector<std::tuple<std::string, at::ScalarType, double>>{
           {"float32 vs cpu float32", at::kFloat, 1e-4}, {"bfloat16 vs cpu float32", at::kBFloat16, 2e-2}}) {
    auto m = BloomModel::from_pretrained(a.model_dir, dev, dtype);
    Run r = forward_backward(*m, prefix, in);
    report(name, r, r32, tol, dev_name);
  }
  std::fprintf(stderr, "check: %s\n", failures ? "FAILED" : "all within tolerance");
  return failures ? 1 : 0;
}

int bench(const Args& a) {
  const std::string dev_name = a.get("device", "cuda");
  const c10::Device dev = parse_device(dev_name);
  const at::ScalarType dtype = parse_dtype(a.get("dtype", "bfloat16"));
  BloomConfig c;
  c.n_layer = a.geti("layers", 24);
  c.hidden_size = a.geti("hidden", 2048);
  c.n_head = a.geti("heads", 16);
  c.vocab_size = a.geti("vocab", 250880);
  const int64_t B = a.geti("batch", 8), T = a.geti("seq", 512), P = a.geti("virtual", 10);
  const int64_t warmup = a.geti("warmup", 3), steps = a.geti("steps", 10);
  const double peak = a.getd("peak-tflops", 989.0) * 1e12;
  const int64_t L = c.n_layer, D = c.hidden_size, V = c.vocab_size;

  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::pair<std::string, at::Tensor>> w;
  {
    c10::NoGradGuard ng;
    auto o = at::TensorOptions().device(dev).dtype(dtype);
    auto normal = [&](std::vector<int64_t> s) { return at::randn(s, o).mul_(0.02); };
    w.emplace_back("word_embeddings.weight", normal({V, D}));
    w.emplace_back("word_embeddings_layernorm.weight", at::ones({D}, o));
    w.emplace_back("word_embeddings_layernorm.bias", at::zeros({D}, o));
    for (int64_t l = 0; l < L; ++l) {
      const std::string p = "h." + std::to_string(l) + ".";
      w.emplace_back(p + "input_layernorm.weight", at::ones({D}, o));
      w.emplace_back(p + "input_layernorm.bias", at::zeros({D}, o));
      w.emplace_back(p + "self_attention.query_key_value.weight", normal({3 * D, D}));
      w.emplace_back(p + "self_attention.query_key_value.bias", at::zeros({3 * D}, o));
      w.emplace_back(p + "self_attention.dense.weight", normal({D, D}));
      w.emplace_back(p + "self_attention.dense.bias", at::zeros({D}, o));
      w.emplace_back(p + "post_attention_layernorm.weight", at::ones({D}, o));
      w.emplace_back(p + "post_attention_layernorm.bias", at::zeros({D}, o));
      w.emplace_back(p + "mlp.dense_h_to_4h.weight", normal({4 * D, D}));
      w.emplace_back(p + "mlp.dense_h_to_4h.bias", at::zeros({4 * D}, o));
      w.emplace_back(p + "mlp.dense_4h_to_h.weight", normal({D, 4 * D}));
      w.emplace_back(p + "mlp.dense_4h_to_h.bias", at::zeros({D}, o));
    }
    w.emplace_back("ln_f.weight", at::ones({D}, o));
    w.emplace_back("ln_f.bias", at::zeros({D}, o));
  }
  BloomModel model(c, w, dev, dtype, "random bench model");
  w.clear();
  PrefixEncoderOptions eo;
  eo.num_virtual_tokens = P;
  eo.num_layers = L;
  eo.token_dim = D;
  manual_seed(0);
  PrefixEncoder enc(eo, dev);
  std::vector<at::Tensor> params;
  for (const auto& [n, t] : enc.named_parameters()) params.push_back(t);
  AdamW opt;
  AdamWHyper h;
  h.lr = 1e-2;
  h.weight_decay.assign(params.size(), 0.0);
  ForwardInputs in;
  in.input_ids = at::randint(V, {B, T}, at::TensorOptions().dtype(at::kLong)).to(dev);
  in.labels = in.input_ids.clone();
  const double setup_s = seconds_since(t0);
  std::fprintf(stderr, "bench: %lld params (%s, %s) ready in %.1f s; B=%lld T=%lld P=%lld\n",
               (long long)model.num_parameters(), dev_name.c_str(), dtype_name(dtype).c_str(), setup_s, (long long)B,
               (long long)T, (long long)P);

  double loss = 0;
  auto step = [&]() {
    enc.zero_grad();
    ForwardOutputs out = model.forward(in, enc.forward(B, false), false, ExecutionOptions{});
    out.loss.backward();
    clip_grad_norm(params, 1.0);
    opt.step(params, h);
    loss = out.loss.item<double>();  // waits for the device
    (void)params[0].sum().item<double>();
  };
  auto tw = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < warmup; ++i) step();
  const double warm_s = seconds_since(tw);
  auto ts = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) step();
  const double s = seconds_since(ts) / static_cast<double>(steps);
  const double N = static_cast<double>(L) * 12.0 * D * D + static_cast<double>(V) * D;
  const double flops_token = 4.0 * N + 12.0 * L * D * static_cast<double>(P + T);
  const double tokens = static_cast<double>(B * T);
  const double tflops = flops_token * tokens / s / 1e12;
  std::printf("{\"bench\":\"prefix-tuning step\",\"device\":\"%s\",\"dtype\":\"%s\",\"params\":%lld,\"layers\":%lld,"
              "\"hidden\":%lld,\"heads\":%lld,\"vocab\":%lld,\"batch\":%lld,\"seq\":%lld,\"virtual\":%lld,\"steps\":%lld,"
              "\"setup_s\":%.2f,\"warmup_s\":%.2f,\"step_s\":%.4f,\"tokens_per_s\":%.1f,\"model_tflops\":%.2f,"
              "\"peak_tflops\":%.0f,\"mfu\":%.4f,\"loss\":%.4f,\"threads\":%d}\n",
              dev_name.c_str(), dtype_name(dtype).c_str(), (long long)model.num_parameters(), (long long)L, (long long)D,
              (long long)c.n_head, (long long)V, (long long)B, (long long)T, (long long)P, (long long)steps, setup_s,
              warm_s, s, tokens / s, tflops, peak / 1e12, tflops * 1e12 / peak, loss, at::get_num_threads());
  std::fflush(stdout);
  return std::isfinite(loss) ? 0 : 1;
}

int ddp(const Args& a) {
  const int world = static_cast<int>(a.geti("world", 2));
  const int port = static_cast<int>(a.geti("port", 29517));
  const int64_t numel = a.geti("numel", 983040);
  const int64_t iters = a.geti("iters", 20);
  const std::string dev_name = a.get("device", "cuda");
  // Fork before anything touches the device or starts threads.
  int rank = 0;
  std::vector<pid_t> children;
  for (int r = 1; r < world; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      rank = r;
      children.clear();
      break;
    }
    children.push_back(pid);
  }
  int status = 0;
  try {
    const c10::Device dev(dev_name);
    ProcessGroupOptions po;
    po.rank = rank;
    po.world_size = world;
    po.master_port = port;
    po.host_store = rank == 0;
    po.timeout = std::chrono::milliseconds(60000);
    auto t0 = std::chrono::steady_clock::now();
    ProcessGroup pg(po);
    const double join_s = seconds_since(t0);
    auto o = at::TensorOptions().dtype(at::kFloat).device(dev);
    // Gradients: each rank holds (rank + 1) · g; their mean is (W + 1) / 2 · g.
    at::Tensor g1 = at::linspace(-1, 1, 1000, o).view({10, 100}), g2 = at::linspace(0, 3, 7, o);
    std::vector<at::Tensor> params{at::zeros({10, 100}, o).requires_grad_(), at::zeros({7}, o).requires_grad_()};
    params[0].mutable_grad() = g1 * (rank + 1);
    params[1].mutable_grad() = g2 * (rank + 1);
    const std::vector<double> counted = pg.average_gradients(params, {1.0, static_cast<double>(rank)});
    const bool counters_ok = counted.size() == 2 && counted[0] == world && counted[1] == world * (world - 1) / 2.0;
    const double want = (world + 1) / 2.0;
    const double grad_err = std::max((params[0].grad() - g1 * want).abs().max().item<double>(),
                                     (params[1].grad() - g2 * want).abs().max().item<double>()) / (3.0 * want);
    // Parameters: rank 0's everywhere.
    {
      at::NoGradGuard ng;
      params[0].fill_(static_cast<double>(rank + 7));
    }
    pg.broadcast_parameters(params);
    const bool broadcast_ok = params[0].eq(7).all().item<bool>();
    const std::vector<double> gathered = pg.all_gather({rank + 0.5});
    bool gather_ok = gathered.size() == static_cast<size_t>(world);
    for (int r = 0; gather_ok && r < world; ++r) gather_ok = gathered[r] == r + 0.5;
    // Averaging a prefix-sized bucket.
    std::vector<at::Tensor> big{at::zeros({numel}, o).requires_grad_()};
    big[0].mutable_grad() = at::ones({numel}, o);
    std::vector<double> ms;
    for (int64_t i = 0; i < iters; ++i) {
      pg.barrier();
      auto ti = std::chrono::steady_clock::now();
      pg.average_gradients(big);
      (void)big[0].grad()[0].item<float>();  // waits for the device
      ms.push_back(seconds_since(ti) * 1000.0);
    }
    std::sort(ms.begin(), ms.end());
    const bool ok = grad_err < 1e-6 && counters_ok && broadcast_ok && gather_ok && big[0].grad().eq(1).all().item<bool>();
    if (rank == 0)
      std::printf("{\"check\":\"ddp\",\"device\":\"%s\",\"world\":%d,\"join_s\":%.3f,\"grad_err\":%.3g,"
                  "\"counters_ok\":%s,\"broadcast_ok\":%s,\"gather_ok\":%s,\"numel\":%lld,\"average_ms_median\":%.3f,\"passed\":%s}\n",
                  dev_name.c_str(), world, join_s, grad_err, counters_ok ? "true" : "false", broadcast_ok ? "true" : "false",
                  gather_ok ? "true" : "false", (long long)numel, ms.empty() ? 0.0 : ms[ms.size() / 2],
                  ok ? "true" : "false");
    std::fflush(stdout);
    pg.barrier();
    status = ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ddp rank %d: %s\n", rank, e.what());
    status = 1;
  }
  if (rank != 0) std::_Exit(status);
  for (pid_t pid : children) {
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) status = 1;
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    if (a.cmd == "check") return check(a);
    if (a.cmd == "bench") return bench(a);
    if (a.cmd == "ddp") return ddp(a);
    std::fprintf(stderr, "usage: %s check <model_dir> [--device cuda] | bench [--device cuda] [--dtype bfloat16] ... | ddp [--device cuda] [--world 2]\n", argv[0]);
    return 2;
  } catch (const peft_node::Error& e) {
    std::fprintf(stderr, "%s: %s\n", e.code().c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
