#include "core/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "core/config.h"
#include "core/errors.h"
#include "core/json.h"

namespace peft_node {

namespace {
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the same cap as the safetensors reference implementation

size_t element_size(at::ScalarType t) { return c10::elementSize(t); }
}  // namespace

at::ScalarType safetensors_dtype(const std::string& dtype, const std::string& where) {
  if (dtype == "F64") return at::kDouble;
  if (dtype == "F32") return at::kFloat;
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  if (dtype == "I64") return at::kLong;
  if (dtype == "I32") return at::kInt;
  if (dtype == "I16") return at::kShort;
  if (dtype == "I8") return at::kChar;
  if (dtype == "U8") return at::kByte;
  if (dtype == "BOOL") return at::kBool;
  fail(codes::kSafetensorsDtype, where + ": unsupported dtype '" + dtype + "'");
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) fail(codes::kFileNotFound, "file not found: " + path);
  if (!S_ISREG(st.st_mode)) fail(codes::kIo, "not a regular file: " + path);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) fail(codes::kSafetensorsHeader, path + ": truncated safetensors header (file has " +
                                                    std::to_string(size) + " bytes, needs at least 8)");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(codes::kIo, "cannot open " + path + ": " + std::strerror(errno));
  // MAP_PRIVATE + PROT_WRITE: copy-on-write, so an in-place update of a weight never touches the file.
  void* map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  int saved_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) fail(codes::kIo, "cannot mmap " + path + ": " + std::strerror(saved_errno));

  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->self_ = f;
  f->path_ = path;
  f->map_ = map;
  f->map_size_ = size;

  const auto* bytes = static_cast<const unsigned char*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes)
    fail(codes::kSafetensorsHeader, path + ": header length " + std::to_string(header_len) +
                                        " exceeds the 100 MB limit");
  if (header_len > size - 8)
    fail(codes::kSafetensorsHeader, path + ": header length " + std::to_string(header_len) +
                                        " goes beyond the end of the file (" + std::to_string(size) + " bytes)");
  f->data_start_ = 8 + header_len;
  const uint64_t data_size = size - f->data_start_;

  json::Value header;
  try {
    header = json::parse(std::string_view(reinterpret_cast<const char*>(bytes + 8), header_len),
                         path + " (safetensors header)");
  } catch (const Error& e) {
    fail(codes::kSafetensorsHeader, e.what());
  }
  if (!header.is_object()) fail(codes::kSafetensorsHeader, path + ": safetensors header is not a JSON object");

  for (const auto& [name, v] : header.as_object()) {
    if (name == "__metadata__") {
      if (!v.is_object()) fail(codes::kSafetensorsHeader, path + ": __metadata__ must be an object");
      for (const auto& [k, mv] : v.as_object()) {
        if (!mv.is_string()) fail(codes::kSafetensorsHeader, path + ": __metadata__ values must be strings");
        f->metadata_.emplace_back(k, mv.as_string());
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    if (!v.is_object()) fail(codes::kSafetensorsHeader, where + " entry is not an object");
    const json::Value* dt = v.find("dtype");
    const json::Value* sh = v.find("shape");
    const json::Value* off = v.find("data_offsets");
    if (!dt || !dt->is_string()) fail(codes::kSafetensorsHeader, where + " has no string 'dtype'");
    if (!sh || !sh->is_array()) fail(codes::kSafetensorsHeader, where + " has no array 'shape'");
    if (!off || !off->is_array() || off->as_array().size() != 2)
      fail(codes::kSafetensorsHeader, where + " has no 'data_offsets' pair");
    SafetensorsEntry e;
    e.name = name;
    e.dtype = dt->as_string();
    at::ScalarType st_type = safetensors_dtype(e.dtype, where);
    // numel with overflow checks: a hostile shape must not wrap around and pass the size check.
    uint64_t numel = 1;
    for (const json::Value& d : sh->as_array()) {
      if (!d.is_integer() || d.as_int() < 0) fail(codes::kSafetensorsHeader, where + " has a non-integer or negative dimension");
      uint64_t dim = static_cast<uint64_t>(d.as_int());
      if (dim != 0 && numel > UINT64_MAX / dim) fail(codes::kSafetensorsOffsets, where + ": shape size overflows");
      numel *= dim;
      e.shape.push_back(d.as_int());
    }
    const json::Value& b = off->as_array()[0];
    const json::Value& en = off->as_array()[1];
    if (!b.is_integer() || !en.is_integer() || b.as_int() < 0 || en.as_int() < 0)
      fail(codes::kSafetensorsOffsets, where + ": data_offsets must be non-negative integers");
    e.begin = static_cast<uint64_t>(b.as_int());
    e.end = static_cast<uint64_t>(en.as_int());
    if (e.begin > e.end) fail(codes::kSafetensorsOffsets, where + ": data_offsets begin > end");
    if (e.end > data_size)
      fail(codes::kSafetensorsOffsets, where + ": data_offsets [" + std::to_string(e.begin) + ", " +
                                           std::to_string(e.end) + "] go beyond the file's data section (" +
                                           std::to_string(data_size) + " bytes)");
    const uint64_t esize = element_size(st_type);
    if (numel > UINT64_MAX / esize || numel * esize != e.end - e.begin)
      fail(codes::kSafetensorsOffsets, where + ": " + std::to_string(e.end - e.begin) +
                                           " bytes in data_offsets do not match shape x dtype (" +
                                           std::to_string(numel) + " x " + std::to_string(esize) + " bytes)");
    // A name given twice: the last entry wins, as JSON.parse (the TS reader) and Python's safetensors read it.
    auto dup = std::find_if(f->entries_.begin(), f->entries_.end(),
                            [&](const SafetensorsEntry& x) { return x.name == e.name; });
    if (dup != f->entries_.end()) f->entries_.erase(dup);
    f->entries_.push_back(std::move(e));
  }
  // Overlapping tensors would alias each other's memory.
  std::vector<const SafetensorsEntry*> sorted;
  for (const auto& e : f->entries_) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i]->begin < sorted[i - 1]->end && sorted[i]->begin != sorted[i]->end)
      fail(codes::kSafetensorsOffsets, path + ": tensors '" + sorted[i - 1]->name + "' and '" + sorted[i]->name +
                                           "' overlap");
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

at::Tensor SafetensorsFile::tensor(const SafetensorsEntry& e) const {
  at::ScalarType t = safetensors_dtype(e.dtype, path_);
  auto* ptr = static_cast<unsigned char*>(map_) + data_start_ + e.begin;
  auto opts = at::TensorOptions().dtype(t).device(at::kCPU);
  if (e.end == e.begin || reinterpret_cast<uintptr_t>(ptr) % element_size(t) != 0) {
    at::Tensor out = at::empty(e.shape, opts);
    if (e.end > e.begin) std::memcpy(out.data_ptr(), ptr, e.end - e.begin);
    return out;
  }
  std::shared_ptr<const SafetensorsFile> keep = self_.lock();
  return at::from_blob(ptr, e.shape, [keep](void*) {}, opts);
}

std::vector<std::pair<std::string, at::Tensor>> load_safetensors_checkpoint(const std::string& dir) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  if (file_exists(single)) {
    auto f = SafetensorsFile::open(single);
    for (const auto& e : f->entries()) out.emplace_back(e.name, f->tensor(e));
    return out;
  }
  if (!file_exists(index))
    fail(codes::kFileNotFound, "no weights found in " + dir + ": looked for " + single + " and " + index);
  json::Value root = json::parse(read_text_file(index), index);
  const json::Value* wm = root.find("weight_map");
  if (!wm || !wm->is_object()) fail(codes::kJson, index + ": missing object 'weight_map'");
  std::vector<std::string> shards;
  std::set<std::pair<std::string, std::string>> expected;  // (tensor, shard)
  for (const auto& [name, shard] : wm->as_object()) {
    if (!shard.is_string()) fail(codes::kJson, index + ": weight_map['" + name + "'] must be a string");
    const std::string& s = shard.as_string();
    if (s.empty() || s.find('/') != std::string::npos || s == "..")
      fail(codes::kJson, index + ": shard name '" + s + "' must be a plain file name in the same directory");
    if (std::find(shards.begin(), shards.end(), s) == shards.end()) shards.push_back(s);
    expected.emplace(name, s);
  }
  for (const std::string& s : shards) {
    auto f = SafetensorsFile::open(dir + "/" + s);
    for (const auto& e : f->entries())
      if (expected.count({e.name, s})) out.emplace_back(e.name, f->tensor(e));
  }
  for (const auto& [name, s] : expected) {
    bool found = std::any_of(out.begin(), out.end(), [&](const auto& p) { return p.first == name; });
    if (!found) fail(codes::kWeightMissing, index + " lists '" + name + "' in " + s + ", but that shard does not hold it");
  }
  return out;
}

}  // namespace peft_node
