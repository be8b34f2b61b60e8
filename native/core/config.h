// BloomConfig: the subset of transformers' BloomConfig that the math needs, parsed from config.json.
#pragma once
#include <cstdint>
#include <string>

namespace peft_node {

struct BloomConfig {
  std::string model_type = "bloom";
  int64_t vocab_size = 250880;
  int64_t hidden_size = 64;
  int64_t n_layer = 2;
  int64_t n_head = 8;
  double layer_norm_epsilon = 1e-5;
  bool apply_residual_connection_post_layernorm = false;
  bool tie_word_embeddings = true;
  double hidden_dropout = 0.0;
  double attention_dropout = 0.0;
  std::string torch_dtype;  // as written in config.json ("float32", "bfloat16", ...), may be empty

  int64_t head_dim() const { return hidden_size / n_head; }

  // Parses and validates config.json text; `path` is used in error messages.
  static BloomConfig from_json_text(const std::string& text, const std::string& path);
  // Reads <dir>/config.json (ERR_FILE_NOT_FOUND naming the path when absent).
  static BloomConfig from_dir(const std::string& dir);
};

// Reads a whole file; ERR_FILE_NOT_FOUND / ERR_IO name the path.
std::string read_text_file(const std::string& path);
bool file_exists(const std::string& path);

}  // namespace peft_node
