#include "core/config.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/errors.h"
#include "core/json.h"

namespace peft_node {

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string read_text_file(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) fail(codes::kFileNotFound, "file not found: " + path);
  if (!S_ISREG(st.st_mode)) fail(codes::kIo, "not a regular file: " + path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(codes::kIo, "cannot open " + path + ": " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail(codes::kIo, "cannot read " + path);
  return ss.str();
}

namespace {

// config.json keys may use either BLOOM's names or the generic aliases of transformers' attribute_map.
const json::Value* find_any(const json::Value& obj, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (const json::Value* v = obj.find(k); v && !v->is_null()) return v;
  return nullptr;
}

int64_t positive_int(const json::Value& obj, std::initializer_list<const char*> keys, int64_t fallback,
                     const std::string& path) {
  const json::Value* v = find_any(obj, keys);
  if (!v) return fallback;
  if (!v->is_integer() || v->as_int() <= 0 || v->as_int() > (int64_t{1} << 31))
    fail(codes::kConfig, path + ": '" + *keys.begin() + "' must be a positive integer");
  return v->as_int();
}

bool boolean(const json::Value& obj, const char* key, bool fallback, const std::string& path) {
  const json::Value* v = obj.find(key);
  if (!v || v->is_null()) return fallback;
  if (!v->is_bool()) fail(codes::kConfig, path + ": '" + key + "' must be a boolean");
  return v->as_bool();
}

double finite_number(const json::Value& obj, const char* key, double fallback, double lo, double hi,
                     const std::string& path) {
  const json::Value* v = obj.find(key);
  if (!v || v->is_null()) return fallback;
  if (!v->is_number() || !(v->as_double() >= lo && v->as_double() <= hi))
    fail(codes::kConfig, path + ": '" + key + "' must be a number in [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "]");
  return v->as_double();
}

}  // namespace

BloomConfig BloomConfig::from_json_text(const std::string& text, const std::string& path) {
  json::Value root = json::parse(text, path);
  if (!root.is_object()) fail(codes::kConfig, path + ": expected a JSON object");
  BloomConfig c;
  if (const json::Value* mt = root.find("model_type")) {
    if (!mt->is_string()) fail(codes::kConfig, path + ": 'model_type' must be a string");
    c.model_type = mt->as_string();
  } else {
    fail(codes::kConfig, path + ": 'model_type' is missing");
  }
  if (c.model_type != "bloom")
    fail(codes::kUnsupportedModel, "model_type '" + c.model_type + "' in " + path +
                                       " is not supported (peft-node supports: bloom)");
  c.vocab_size = positive_int(root, {"vocab_size"}, c.vocab_size, path);
  c.hidden_size = positive_int(root, {"hidden_size", "n_embed"}, c.hidden_size, path);
  c.n_layer = positive_int(root, {"n_layer", "num_hidden_layers"}, c.n_layer, path);
  c.n_head = positive_int(root, {"n_head", "num_attention_heads"}, c.n_head, path);
  c.layer_norm_epsilon = finite_number(root, "layer_norm_epsilon", c.layer_norm_epsilon, 0.0, 1.0, path);
  c.hidden_dropout = finite_number(root, "hidden_dropout", 0.0, 0.0, 1.0, path);
  c.attention_dropout = finite_number(root, "attention_dropout", 0.0, 0.0, 1.0, path);
  c.apply_residual_connection_post_layernorm =
      boolean(root, "apply_residual_connection_post_layernorm", false, path);
  c.tie_word_embeddings = boolean(root, "tie_word_embeddings", true, path);
  for (const char* key : {"torch_dtype", "dtype"})
    if (const json::Value* v = root.find(key); v && v->is_string()) c.torch_dtype = v->as_string();
  if (c.hidden_size % c.n_head != 0)
    fail(codes::kConfig, path + ": hidden_size " + std::to_string(c.hidden_size) + " is not divisible by n_head " +
                             std::to_string(c.n_head));
  if (c.n_layer > 4096 || c.n_head > 4096 || c.hidden_size > (1 << 20) || c.vocab_size > (1 << 24))
    fail(codes::kConfig, path + ": implausible model size (n_layer, n_head, hidden_size or vocab_size too large)");
  return c;
}

BloomConfig BloomConfig::from_dir(const std::string& dir) {
  std::string path = dir + "/config.json";
  return from_json_text(read_text_file(path), path);
}

}  // namespace peft_node
