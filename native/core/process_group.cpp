// c10d process group for data-parallel training (see process_group.h).
#include "core/process_group.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
// PEFT_NODE_NO_C10D_GLOO: the build found this libtorch's Gloo header unusable (CMakeLists.txt checks it).
#if defined(USE_C10D_GLOO) && !defined(PEFT_NODE_NO_C10D_GLOO)
#define PEFT_NODE_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif

#include <cstdlib>
#include <cstring>

#include "core/errors.h"

namespace peft_node {

namespace {

// c10d's messages start with a source location ("[/__w/pytorch/.../pair.cc:537] ") and end with generic advice;
// keep the part that says what happened.
std::string short_reason(const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  std::string s = c10 ? c10->what_without_backtrace() : e.what();
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find("] ");
    if (close != std::string::npos && close < 200) s = s.substr(close + 2);
  }
  for (const char* cut : {" This is typically caused", "\nException raised from", "\nframe #"}) {
    size_t at = s.find(cut);
    if (at != std::string::npos) s = s.substr(0, at);
  }
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return printable(s.size() > 400 ? s.substr(0, 400) + "..." : s);
}

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

std::string seconds(std::chrono::milliseconds t) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", static_cast<double>(t.count()) / 1000.0);
  return buf;
}

// While joining, clients retry until rank 0 is up and c10d logs each retry as an error with a C++ backtrace; the
// outcome is reported as one ERR_DISTRIBUTED instead. TORCH_CPP_LOG_LEVEL, when set, keeps c10d's own logs.
class QuietJoinLogs {
 public:
  QuietJoinLogs() : active_(std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr), saved_(FLAGS_caffe2_log_level) {
    if (active_) FLAGS_caffe2_log_level = 3;  // FATAL only
  }
  ~QuietJoinLogs() {
    if (active_) FLAGS_caffe2_log_level = saved_;
  }

 private:
  bool active_;
  int saved_;
};

}  // namespace

std::vector<std::string> distributed_backends() {
#ifdef PEFT_NODE_GLOO
  return {"gloo"};
#else
  return {};
#endif
}

ProcessGroup::ProcessGroup(const ProcessGroupOptions& opts) : opts_(opts) {
  if (opts.world_size < 1) fail(codes::kInvalidInput, "world_size must be >= 1");
  if (opts.rank < 0 || opts.rank >= opts.world_size)
    fail(codes::kInvalidInput, "rank " + std::to_string(opts.rank) + " is outside [0, world_size=" +
                                   std::to_string(opts.world_size) + ")");
  if (opts.master_port < 1 || opts.master_port > 65535)
    fail(codes::kInvalidInput, "master_port must be in [1, 65535], got " + std::to_string(opts.master_port));
  if (opts.timeout.count() <= 0) fail(codes::kInvalidInput, "the distributed timeout must be positive");
  if (opts.backend != "gloo")
    fail(codes::kDistributed, "backend '" + printable(opts.backend) +
                           "' is not available in this build: peft-node's data-parallel training uses Gloo (CPU "
                           "and CUDA tensors; a prefix's gradients are small enough to go through host memory)");
#ifndef PEFT_NODE_GLOO
  fail(codes::kDistributed, "this build of peft-node has no Gloo process group (its libtorch lacks USE_C10D_GLOO, or the "
                            "build found its c10d Gloo header unusable): data-parallel training is unavailable");
#else
  QuietJoinLogs quiet;
  const std::string where = opts.master_addr + ":" + std::to_string(opts.master_port);
  const std::string who = "rank " + std::to_string(opts.rank) + "/" + std::to_string(opts.world_size);
  c10::intrusive_ptr<c10d::TCPStore> tcp;
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(opts.master_port);
    so.isServer = opts.host_store;
    so.numWorkers = opts.world_size;
    so.waitWorkers = true;  // every store counts itself in; the host waits for all world_size of them
    so.timeout = opts.timeout;
    tcp = c10::make_intrusive<c10d::TCPStore>(opts.master_addr, so);
  } catch (const std::exception& e) {
    const std::string r = short_reason(e);
    if (opts.host_store && (contains(r, "EADDRINUSE") || contains(r, "address already in use")))
      fail(codes::kDistributed, who + " cannot host the rendezvous store on " + where +
                             ": the port is already in use (another training job?). Pick a free port with "
                             "--master-port / MASTER_PORT. (" + r + ")");
    if (opts.host_store && contains(r, "waiting for clients"))
      fail(codes::kDistributed, who + " hosted the rendezvous store on " + where + " but not all " +
                             std::to_string(opts.world_size) + " processes joined within " + seconds(opts.timeout) +
                             " (a worker failed to start, or WORLD_SIZE disagrees between processes). (" + r + ")");
    if (opts.host_store)
      fail(codes::kDistributed, who + " cannot host the rendezvous store on " + where + ": " + r);
    fail(codes::kDistributed, who + " cannot reach the rendezvous store at " + where + " within " + seconds(opts.timeout) +
                           " (is rank 0 running, and are MASTER_ADDR/MASTER_PORT the same everywhere?). (" + r + ")");
  }
  // Our keys under their own prefix: under torchrun the store is the launcher's and holds its keys too.
  store_ = c10::make_intrusive<c10d::PrefixStore>("peft_node/", tcp);
  try {
    auto go = c10d::ProcessGroupGloo::Options::create(opts.timeout);
    // Gloo binds to the address peers reach this process on; on one machine that is loopback.
    const bool local = opts.master_addr == "127.0.0.1" || opts.master_addr == "localhost";
    go->devices.push_back(local ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                : c10d::ProcessGroupGloo::createDefaultDevice());
    go->threads = 1;
    backend_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, opts.rank, opts.world_size, go);
  } catch (const std::exception& e) {
    fail(codes::kDistributed, who + " could not connect the Gloo process group (rendezvous at " + where +
                           "): " + short_reason(e));
  }
#endif
}

ProcessGroup::~ProcessGroup() = default;

void ProcessGroup::fail_collective(const char* what, const std::string& reason) const {
  fail(codes::kDistributed, "rank " + std::to_string(opts_.rank) + "/" + std::to_string(opts_.world_size) + ": " + what +
                         " failed: another process left the group or did not answer within " +
                         seconds(opts_.timeout) + " (see the other ranks' output for the cause). (" + reason + ")");
}

void ProcessGroup::all_reduce_sum(at::Tensor& t, const char* what) {
  at::Tensor host = t.device().is_cpu() ? t : t.to(at::kCPU);
  std::vector<at::Tensor> ts{host};
  try {
    backend_->allreduce(ts)->wait();
  } catch (const std::exception& e) {
    fail_collective(what, short_reason(e));
  }
  if (!t.device().is_cpu()) t.copy_(host);
}

std::vector<double> ProcessGroup::average_gradients(const std::vector<at::Tensor>& params,
                                                    const std::vector<double>& counters) {
  if (params.empty() && counters.empty()) return {};
  // One bucket in the parameters' dtype and device (a prefix is float32), each grad scaled straight into its slice
  // as DDP's reducer does (mul_out, no temporary per grad); the counters go at its end.
  const at::TensorOptions bucket_options =
      params.empty() ? at::TensorOptions().dtype(at::kFloat) : params[0].options().requires_grad(false);
  int64_t total = static_cast<int64_t>(counters.size());
  for (const at::Tensor& p : params) total += p.numel();
  at::Tensor bucket = at::empty({total}, bucket_options);
  const at::Tensor inv = at::scalar_tensor(1.0 / static_cast<double>(opts_.world_size), at::kDouble);
  int64_t offset = 0;
  for (const at::Tensor& p : params) {
    at::Tensor slice = bucket.narrow(0, offset, p.numel()).view(p.sizes());
    offset += p.numel();
    if (p.grad().defined()) {
      at::mul_out(slice, p.grad(), inv);
    } else {
      slice.zero_();
    }
  }
  if (!counters.empty()) bucket.narrow(0, offset, total - offset).copy_(at::tensor(counters, at::TensorOptions().dtype(at::kDouble)));
  all_reduce_sum(bucket, "all-reduce of the gradients");
  std::vector<double> summed;
  if (!counters.empty()) {
    at::Tensor c = bucket.narrow(0, offset, total - offset).to(at::kCPU, at::kDouble).contiguous();
    summed.assign(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  }
  offset = 0;
  for (const at::Tensor& p : params) {
    at::Tensor part = bucket.narrow(0, offset, p.numel()).view(p.sizes());
    offset += p.numel();
    if (p.grad().defined()) {
      p.mutable_grad().copy_(part);
    } else {
      p.mutable_grad() = part.clone();
    }
  }
  return summed;
}

void ProcessGroup::broadcast_parameters(const std::vector<at::Tensor>& params) {
  if (params.empty()) return;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> flat;
  for (const at::Tensor& p : params) flat.push_back(p.detach().reshape(-1).to(at::kCPU));
  std::vector<at::Tensor> bucket{at::cat(flat)};
  try {
    c10d::BroadcastOptions o;
    o.rootRank = 0;
    backend_->broadcast(bucket, o)->wait();
  } catch (const std::exception& e) {
    fail_collective("broadcast of rank 0's parameters", short_reason(e));
  }
  int64_t offset = 0;
  for (const at::Tensor& p : params) {
    p.detach().copy_(bucket[0].narrow(0, offset, p.numel()).view(p.sizes()));
    offset += p.numel();
  }
}

std::vector<double> ProcessGroup::all_gather(const std::vector<double>& values) {
  const int64_t n = static_cast<int64_t>(values.size());
  // A sum of one-hot rows: every value arrives unchanged (x + 0 == x), in rank order.
  at::Tensor rows = at::zeros({opts_.world_size, n}, at::TensorOptions().dtype(at::kDouble));
  if (n > 0) std::memcpy(rows[opts_.rank].data_ptr<double>(), values.data(), sizeof(double) * n);
  all_reduce_sum(rows, "gather of the step counters");
  const double* p = rows.data_ptr<double>();
  return std::vector<double>(p, p + opts_.world_size * n);
}

std::vector<std::string> ProcessGroup::all_gather_string(const std::string& value) {
  const std::string round = "gather/" + std::to_string(gather_round_++) + "/";
  std::vector<std::string> out;
  try {
    store_->set(round + std::to_string(opts_.rank), std::vector<uint8_t>(value.begin(), value.end()));
    for (int r = 0; r < opts_.world_size; ++r) {
      std::vector<uint8_t> v = store_->get(round + std::to_string(r));
      out.emplace_back(v.begin(), v.end());
    }
  } catch (const std::exception& e) {
    fail_collective("exchanging the training configuration", short_reason(e));
  }
  return out;
}

void ProcessGroup::barrier() {
  try {
    backend_->barrier()->wait();
  } catch (const std::exception& e) {
    fail_collective("barrier", short_reason(e));
  }
}

}  // namespace peft_node
