// Plain C++ check over native/core (no Node): loads a BLOOM dir, runs a forward (+ backward through a random prefix)
// and prints loss, timing and the prefix gradient norm. Runs on machines without Node (GPU hosts):
//   peft_node_check <model_dir> [cpu|cuda] [float32|bfloat16|float16] [batch] [seq_len] [virtual_tokens]
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "core/bloom.h"
#include "core/errors.h"
#include "core/prefix_encoder.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <model_dir> [device] [dtype] [batch] [seq_len] [virtual_tokens]\n", argv[0]);
    return 2;
  }
  try {
    using namespace peft_node;
    const std::string dir = argv[1];
    c10::Device device = parse_device(argc > 2 ? argv[2] : "cpu");
    at::ScalarType dtype = parse_dtype(argc > 3 ? argv[3] : "float32");
    const int64_t B = argc > 4 ? std::stoll(argv[4]) : 2, T = argc > 5 ? std::stoll(argv[5]) : 16;
    const int64_t P = argc > 6 ? std::stoll(argv[6]) : 4;
    auto t0 = std::chrono::steady_clock::now();
    auto model = BloomModel::from_pretrained(dir, device, dtype);
    auto t1 = std::chrono::steady_clock::now();
    const auto& c = model->config();
    manual_seed(0);
    PrefixEncoderOptions eo;
    eo.num_virtual_tokens = P;
    eo.num_layers = c.n_layer;
    eo.token_dim = c.hidden_size;
    PrefixEncoder enc(eo, device);
    ForwardInputs in;
    in.input_ids = at::randint(c.vocab_size, {B, T}, at::TensorOptions().dtype(at::kLong));
    in.labels = in.input_ids.clone();
    ForwardOutputs out = model->forward(in, enc.forward(B, false), false, ExecutionOptions{});
    out.loss.backward();
    auto t2 = std::chrono::steady_clock::now();
    auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
    std::printf("{\"params\":%lld,\"load_ms\":%.1f,\"step_ms\":%.1f,\"loss\":%.6f,\"prefix_grad_norm\":%.6g}\n",
                static_cast<long long>(model->num_parameters()), ms(t0, t1), ms(t1, t2), out.loss.item<double>(),
                enc.parameter("embedding.weight").grad().norm().item<double>());
    return 0;
  } catch (const peft_node::Error& e) {
    std::fprintf(stderr, "%s: %s\n", e.code().c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
