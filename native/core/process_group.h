// Data-parallel communication over libtorch's own c10d: a TCPStore rendezvous from torchrun's environment and a Gloo
// process group (CPU; tensors on another device are staged through host memory). This is what HF Trainer gets from
// DistributedDataParallel for a prefix: one bucket of trainable gradients, averaged; plus small gathers of counters.
#pragma once
#include <ATen/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace c10d {
class Store;
class Backend;
}  // namespace c10d

namespace peft_node {

struct ProcessGroupOptions {
  int rank = 0;
  int world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // This process hosts the TCPStore: rank 0, unless a launcher's agent hosts it (torchrun:
  // TORCHELASTIC_USE_AGENT_STORE=True).
  bool host_store = false;
  // Rendezvous and every collective fail after this long without progress (HF's ddp_timeout).
  std::chrono::milliseconds timeout{1800 * 1000};
  std::string backend = "gloo";
};

// The process-group backends this build has ("gloo", or none when its libtorch's Gloo header was unusable).
std::vector<std::string> distributed_backends();

class ProcessGroup {
 public:
  // Joins the group: connects to (or hosts) the store and builds the backend. ERR_DISTRIBUTED on any failure
  // (port in use, master unreachable, peers missing within the timeout), naming the address and the rank.
  explicit ProcessGroup(const ProcessGroupOptions& opts);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return opts_.rank; }
  int world_size() const { return opts_.world_size; }
  const ProcessGroupOptions& options() const { return opts_; }

  // DDP's gradient averaging as its Reducer does it: each grad times 1/world_size into one flat bucket, summed across
  // ranks, copied back. A parameter without a grad contributes zeros (and gets the averaged grad). `counters` (small
  // integers such as flags; exact in float32 up to 2^24) ride in the same all-reduce and come back summed over ranks,
  // saving a round trip per step.
  std::vector<double> average_gradients(const std::vector<at::Tensor>& params, const std::vector<double>& counters = {});

  // DDP's start: every rank takes rank 0's parameter values (one flat broadcast).
  void broadcast_parameters(const std::vector<at::Tensor>& params);

  // Every rank's `values`, rank-major ([world_size · n]), exactly (float64; a float32 or an integer up to 2^53 passes
  // unchanged). All ranks must pass the same n.
  std::vector<double> all_gather(const std::vector<double>& values);

  // Every rank's string, in rank order, through the store (start-up consistency checks).
  std::vector<std::string> all_gather_string(const std::string& value);

  void barrier();

 private:
  void all_reduce_sum(at::Tensor& t, const char* what);
  [[noreturn]] void fail_collective(const char* what, const std::string& reason) const;

  ProcessGroupOptions opts_;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  int64_t gather_round_ = 0;
};

}  // namespace peft_node
