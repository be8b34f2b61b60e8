#include "core/torch_pickle.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <unordered_map>

#include "core/errors.h"
#include "core/zip_reader.h"

namespace peft_node {

namespace {

constexpr uint64_t kMaxPickleBytes = 256ull << 20;  // a state dict's pickle is a few hundred KB even for 176B models
constexpr size_t kMaxDims = 64;
constexpr size_t kMaxGlobalName = 256;

// What torch.save's pickle can hold once its globals are resolved. Objects live in an arena and refer to each other
// by index: a hostile pickle can build cycles or deep nesting, which must not leak or recurse on destruction.
enum class Kind : uint8_t { None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor };
enum class Callable : uint8_t { OrderedDict, RebuildTensorV2, RebuildParameter, StorageType };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

struct Obj {
  Kind kind = Kind::None;
  bool ordered_dict = false;     // Dict made by OrderedDict(): the only target BUILD may (and does) update
  int64_t i = 0;                 // Int, Bool
  double f = 0;                  // Float
  std::string s;                 // Str; Global: "module.name"; Storage: its key
  std::vector<uint32_t> items;   // Tuple, List: elements; Dict: key, value, key, value, ...
  Callable callable{};           // Global
  at::ScalarType dtype{};        // Global (StorageType), Storage
  at::Tensor storage;            // Storage: all its elements, 1-D
  uint32_t base = 0;             // Tensor: its Storage
  int64_t offset = 0;            // Tensor: storage offset, sizes and strides, checked when the tensor is made
  std::vector<int64_t> sizes, strides;
};

// torch.<Dtype>Storage: the storage types torch.save names in persistent ids (TypedStorage.pickle_storage_type()).
bool storage_dtype(const std::string& name, at::ScalarType& out) {
  static const std::pair<const char*, at::ScalarType> kTypes[] = {
      {"DoubleStorage", at::kDouble}, {"FloatStorage", at::kFloat}, {"HalfStorage", at::kHalf},
      {"BFloat16Storage", at::kBFloat16}, {"LongStorage", at::kLong}, {"IntStorage", at::kInt},
      {"ShortStorage", at::kShort}, {"CharStorage", at::kChar}, {"ByteStorage", at::kByte},
      {"BoolStorage", at::kBool}};
  for (const auto& [n, t] : kTypes)
    if (name == n) {
      out = t;
      return true;
    }
  return false;
}


std::string shape_str(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

class Unpickler {
 public:
  Unpickler(const ZipArchive& zip, std::string prefix, std::string pickle)
      : zip_(zip), prefix_(std::move(prefix)), data_(std::move(pickle)), where_(zip.path() + " (" + prefix_ + "/data.pkl)") {}

  std::vector<std::pair<std::string, at::Tensor>> run() {
    execute();
    return state_dict();
  }

 private:
  const ZipArchive& zip_;
  const std::string prefix_;
  const std::string data_;
  const std::string where_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;  // where the opcode being run starts, for messages
  std::deque<Obj> objs_;  // deque: references stay valid while objects are added
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, uint32_t> memo_;
  std::unordered_map<std::string, std::vector<uint32_t>> storages_;  // key -> Storage objects (one per dtype)
  std::unordered_map<uint32_t, at::Tensor> tensors_;                 // Tensor object -> the tensor made for it

  [[noreturn]] void bad(const std::string& msg) const {
    fail(codes::kPickle, where_ + ": " + msg + " (opcode at byte " + std::to_string(op_pos_) + ")");
  }
  [[noreturn]] void unsafe(const std::string& what) const {
    fail(codes::kUnsafePickle,
         where_ + ": the pickle " + what + ", which a state dict never needs; refusing to load it (nothing in the file "
                  "was run). peft-node allows only collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
                  "torch._utils._rebuild_parameter and torch.<Dtype>Storage. If the file is a whole pickled model "
                  "rather than a state dict, and you trust its source, load it in Python and save its state_dict() "
                  "or use save_pretrained(safe_serialization=True).");
  }

  // --- reading the byte stream
  const unsigned char* take(uint64_t n) {
    if (n > data_.size() - pos_) bad("the pickle ends in the middle of an opcode (truncated data.pkl)");
    const auto* p = reinterpret_cast<const unsigned char*>(data_.data() + pos_);
    pos_ += n;
    return p;
  }
  uint64_t le(uint64_t n) {
    const unsigned char* p = take(n);
    uint64_t v = 0;
    for (uint64_t k = n; k-- > 0;) v = (v << 8) | p[k];
    return v;
  }
  std::string text(uint64_t n) {
    const unsigned char* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  std::string line() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string::npos || end - pos_ > kMaxGlobalName) bad("a GLOBAL name is unterminated or too long");
    std::string s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }

  // --- the stack; MARK opens a frame that pops may not reach below (as in Python's unpickler)
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  uint32_t add(Obj o) {
    objs_.push_back(std::move(o));
    return static_cast<uint32_t>(objs_.size() - 1);
  }
  void push(uint32_t id) { stack_.push_back(id); }
  void push_new(Obj o) { push(add(std::move(o))); }
  uint32_t pop() {
    if (stack_.size() <= floor()) bad("stack underflow");
    uint32_t v = stack_.back();
    stack_.pop_back();
    return v;
  }
  uint32_t top() const {
    if (stack_.size() <= floor()) bad("stack underflow");
    return stack_.back();
  }
  std::vector<uint32_t> pop_mark() {
    if (marks_.empty()) bad("no MARK to pop to");
    std::vector<uint32_t> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Obj& obj(uint32_t id) { return objs_[id]; }
  Obj& expect(uint32_t id, Kind k, const char* what) {
    Obj& o = objs_[id];
    if (o.kind != k) bad(std::string(what) + " must be a " + kind_name(k) + ", not a " + kind_name(o.kind));
    return o;
  }
  int64_t as_int(uint32_t id, const char* what) {
    const Obj& o = objs_[id];
    if (o.kind != Kind::Int && o.kind != Kind::Bool) bad(std::string(what) + " must be an int, not a " + kind_name(o.kind));
    return o.i;
  }
  void memo_put(uint32_t index) { memo_[index] = top(); }
  void memo_get(uint32_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) bad("memo entry " + std::to_string(index) + " is read before it is written");
    push(it->second);
  }

  void push_int(int64_t v) {
    Obj o;
    o.kind = Kind::Int;
    o.i = v;
    push_new(std::move(o));
  }
  void push_str(std::string s) {
    Obj o;
    o.kind = Kind::Str;
    o.s = std::move(s);
    push_new(std::move(o));
  }
  void push_container(Kind k, std::vector<uint32_t> items = {}) {
    Obj o;
    o.kind = k;
    o.items = std::move(items);
    push_new(std::move(o));
  }

  // GLOBAL / STACK_GLOBAL: resolved against the allow-list when read, so a disallowed callable never even exists.
  void global(const std::string& module, const std::string& name) {
    Obj g;
    g.kind = Kind::Global;
    g.s = module + "." + name;
    if (module == "collections" && name == "OrderedDict") {
      g.callable = Callable::OrderedDict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      g.callable = Callable::RebuildTensorV2;
    } else if (module == "torch._utils" && name == "_rebuild_parameter") {
      g.callable = Callable::RebuildParameter;
    } else if (module == "torch" && storage_dtype(name, g.dtype)) {
      g.callable = Callable::StorageType;
    } else {
      unsafe("names the global '" + printable(module) + "." + printable(name) + "'");
    }
    push_new(std::move(g));
  }

  // BINPERSID: ('storage', torch.<Dtype>Storage, key, location, numel) -> the bytes of <prefix>/data/<key>.
  uint32_t persistent_load(uint32_t pid) {
    const Obj& t = expect(pid, Kind::Tuple, "a persistent id");
    if (t.items.size() != 5 || obj(t.items[0]).kind != Kind::Str || obj(t.items[0]).s != "storage")
      bad("a persistent id must be ('storage', type, key, location, numel)");
    const Obj& type = expect(t.items[1], Kind::Global, "a storage type");
    if (type.callable != Callable::StorageType) bad("'" + type.s + "' is not a storage type");
    const std::string key = expect(t.items[2], Kind::Str, "a storage key").s;
    expect(t.items[3], Kind::Str, "a storage location");  // the device it was saved from: loading is always to CPU
    const int64_t numel = as_int(t.items[4], "a storage size");
    const at::ScalarType dtype = type.dtype;
    for (uint32_t id : storages_[key])
      if (obj(id).dtype == dtype) return id;  // shared storage: the same object, so tensors share memory
    const std::string name = prefix_ + "/data/" + key;
    const ZipEntry* e = zip_.find(name);
    if (!e)
      fail(codes::kZip, zip_.path() + ": the pickle refers to storage '" + printable(key) + "', but the archive has no entry '" +
                            printable(name) + "' (truncated or incomplete checkpoint)");
    const uint64_t esize = c10::elementSize(dtype);
    if (numel < 0 || static_cast<uint64_t>(numel) > UINT64_MAX / esize || static_cast<uint64_t>(numel) * esize != e->size)
      fail(codes::kPickle, where_ + ": storage '" + printable(key) + "' declares " + std::to_string(numel) + " elements of " +
                               c10::toString(dtype) + " (" + std::to_string(static_cast<uint64_t>(numel) * esize) +
                               " bytes), but its archive entry holds " + std::to_string(e->size) + " bytes");
    Obj s;
    s.kind = Kind::Storage;
    s.s = key;
    s.dtype = dtype;
    s.storage = zip_.tensor(*e, dtype, numel);
    const uint32_t id = add(std::move(s));
    storages_[key].push_back(id);
    return id;
  }

  // REDUCE: only the allowed callables, each interpreted here (never by calling into anything).
  uint32_t call(uint32_t fn_id, uint32_t args_id) {
    const Obj& fn = expect(fn_id, Kind::Global, "a REDUCE callable");
    const std::vector<uint32_t> args = expect(args_id, Kind::Tuple, "REDUCE arguments").items;
    switch (fn.callable) {
      case Callable::OrderedDict: {
        if (!args.empty()) bad("OrderedDict(...) with arguments is not written by torch.save");
        Obj d;
        d.kind = Kind::Dict;
        d.ordered_dict = true;
        return add(std::move(d));
      }
      case Callable::RebuildTensorV2: {
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if (args.size() != 6 && args.size() != 7) bad("_rebuild_tensor_v2 takes 6 or 7 arguments, got " + std::to_string(args.size()));
        Obj t;
        t.kind = Kind::Tensor;
        t.base = args[0];
        expect(args[0], Kind::Storage, "a tensor's storage");
        t.offset = as_int(args[1], "a storage offset");
        const auto& size = expect(args[2], Kind::Tuple, "a tensor size").items;
        const auto& stride = expect(args[3], Kind::Tuple, "a tensor stride").items;
        if (size.size() != stride.size()) bad("a tensor's size and stride have different lengths");
        if (size.size() > kMaxDims) bad("a tensor has more than " + std::to_string(kMaxDims) + " dimensions");
        for (size_t k = 0; k < size.size(); ++k) {
          t.sizes.push_back(as_int(size[k], "a tensor size"));
          t.strides.push_back(as_int(stride[k], "a tensor stride"));
        }
        return add(std::move(t));
      }
      case Callable::RebuildParameter: {
        // (data, requires_grad, backward_hooks): a Parameter is its data here.
        if (args.size() != 3) bad("_rebuild_parameter takes 3 arguments, got " + std::to_string(args.size()));
        expect(args[0], Kind::Tensor, "a parameter's data");
        return args[0];
      }
      case Callable::StorageType: bad("calling " + fn.s + " is not part of a state dict");
    }
    bad("unknown callable");
  }

  void execute() {
    while (true) {
      op_pos_ = pos_;
      const unsigned char op = *take(1);
      switch (op) {
        case 0x80: {  // PROTO
          const unsigned v = *take(1);
          if (v < 2 || v > 5) bad("pickle protocol " + std::to_string(v) + " (torch.save writes 2)");
          break;
        }
        case 0x95: take(8); break;  // FRAME: a read-ahead hint
        case '.':  // STOP
          return;
        case '(': marks_.push_back(stack_.size()); break;  // MARK
        case '}': push_container(Kind::Dict); break;       // EMPTY_DICT
        case ']': push_container(Kind::List); break;       // EMPTY_LIST
        case ')': push_container(Kind::Tuple); break;      // EMPTY_TUPLE
        case 't': push_container(Kind::Tuple, pop_mark()); break;  // TUPLE
        case 0x85: case 0x86: case 0x87: {  // TUPLE1..3
          std::vector<uint32_t> items(op - 0x84);
          for (size_t k = items.size(); k-- > 0;) items[k] = pop();
          push_container(Kind::Tuple, std::move(items));
          break;
        }
        case 'l': push_container(Kind::List, pop_mark()); break;  // LIST
        case 'd': {  // DICT
          std::vector<uint32_t> items = pop_mark();
          if (items.size() % 2) bad("DICT with an odd number of items");
          push_container(Kind::Dict, std::move(items));
          break;
        }
        case 'a': {  // APPEND
          const uint32_t v = pop();
          expect(top(), Kind::List, "APPEND's target").items.push_back(v);
          break;
        }
        case 'e': {  // APPENDS
          std::vector<uint32_t> items = pop_mark();
          auto& list = expect(top(), Kind::List, "APPENDS' target").items;
          list.insert(list.end(), items.begin(), items.end());
          break;
        }
        case 's': {  // SETITEM
          const uint32_t v = pop(), k = pop();
          auto& dict = expect(top(), Kind::Dict, "SETITEM's target").items;
          dict.push_back(k);
          dict.push_back(v);
          break;
        }
        case 'u': {  // SETITEMS
          std::vector<uint32_t> items = pop_mark();
          if (items.size() % 2) bad("SETITEMS with an odd number of items");
          auto& dict = expect(top(), Kind::Dict, "SETITEMS' target").items;
          dict.insert(dict.end(), items.begin(), items.end());
          break;
        }
        case 'X': push_str(text(le(4))); break;     // BINUNICODE
        case 0x8c: push_str(text(le(1))); break;    // SHORT_BINUNICODE
        case 0x8d: push_str(text(le(8))); break;    // BINUNICODE8
        case 'J': push_int(static_cast<int32_t>(le(4))); break;  // BININT
        case 'K': push_int(static_cast<int64_t>(le(1))); break;  // BININT1
        case 'M': push_int(static_cast<int64_t>(le(2))); break;  // BININT2
        case 0x8a: {  // LONG1: little-endian two's complement
          const uint64_t n = le(1);
          if (n > 8) bad("an integer wider than 64 bits");
          uint64_t v = n ? le(n) : 0;
          if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
          push_int(static_cast<int64_t>(v));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian double
          const unsigned char* p = take(8);
          uint64_t bits = 0;
          for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];
          Obj o;
          o.kind = Kind::Float;
          std::memcpy(&o.f, &bits, 8);
          push_new(std::move(o));
          break;
        }
        case 'N': push_new(Obj{}); break;  // NONE
        case 0x88: case 0x89: {  // NEWTRUE, NEWFALSE
          Obj o;
          o.kind = Kind::Bool;
          o.i = op == 0x88;
          push_new(std::move(o));
          break;
        }
        case 'q': memo_put(static_cast<uint32_t>(le(1))); break;  // BINPUT
        case 'r': memo_put(static_cast<uint32_t>(le(4))); break;  // LONG_BINPUT
        case 0x94: memo_put(static_cast<uint32_t>(memo_.size())); break;  // MEMOIZE
        case 'h': memo_get(static_cast<uint32_t>(le(1))); break;  // BINGET
        case 'j': memo_get(static_cast<uint32_t>(le(4))); break;  // LONG_BINGET
        case 'c': {  // GLOBAL
          const std::string module = line();
          global(module, line());
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          const uint32_t name = pop(), module = pop();
          global(expect(module, Kind::Str, "STACK_GLOBAL's module").s, expect(name, Kind::Str, "STACK_GLOBAL's name").s);
          break;
        }
        case 'Q': push(persistent_load(pop())); break;  // BINPERSID
        case 'R': {  // REDUCE
          const uint32_t args = pop(), fn = pop();
          push(call(fn, args));
          break;
        }
        case 'b': {  // BUILD: torch.save sets an OrderedDict's _metadata (module versions), which loading ignores
          pop();
          const Obj& target = obj(top());
          if (target.kind != Kind::Dict || !target.ordered_dict)
            bad(std::string("BUILD on a ") + kind_name(target.kind) + " (torch.save only sets an OrderedDict's _metadata)");
          break;
        }
        // Opcodes that instantiate classes or look up callables by other means: never in torch.save's state dicts.
        case 'i': {  // INST module\nname\n
          const std::string module = line();
          unsafe("instantiates '" + printable(module) + "." + printable(line()) + "' (INST)");
        }
        case 'o': unsafe("instantiates a class (OBJ)");
        case 0x81: unsafe("instantiates a class (NEWOBJ)");
        case 0x92: unsafe("instantiates a class (NEWOBJ_EX)");
        case 0x82: case 0x83: case 0x84: unsafe("looks up a callable in the copyreg extension registry (EXT)");
        default: {
          char buf[64];
          std::snprintf(buf, sizeof buf, "opcode 0x%02x", op);
          bad(std::string(buf) + " is not one torch.save writes for a state dict");
        }
      }
    }
  }

  at::Tensor make_tensor(uint32_t id, const std::string& name) {
    if (auto it = tensors_.find(id); it != tensors_.end()) return it->second;
    const Obj& t = obj(id);
    const Obj& s = obj(t.base);
    const int64_t have = s.storage.numel();
    const std::string what = zip_.path() + ": tensor '" + printable(name) + "' (size " + shape_str(t.sizes) + ", stride " +
                             shape_str(t.strides) + ", offset " + std::to_string(t.offset) + ")";
    // Extent of the view in elements, overflow-checked: a hostile size x stride must not wrap into range.
    int64_t numel = 1, last = t.offset;
    bool overflow = t.offset < 0;
    for (size_t k = 0; k < t.sizes.size(); ++k) {
      if (t.sizes[k] < 0 || t.strides[k] < 0) fail(codes::kPickle, what + " has a negative size or stride");
      overflow |= __builtin_mul_overflow(numel, t.sizes[k], &numel);
      int64_t reach = 0;
      if (t.sizes[k] > 0) overflow |= __builtin_mul_overflow(t.sizes[k] - 1, t.strides[k], &reach);
      overflow |= __builtin_add_overflow(last, reach, &last);
    }
    if (overflow) fail(codes::kPickle, what + ": size x stride overflows");
    if (numel > 0 && (last >= have || numel > have))
      fail(codes::kPickle, what + " needs " + std::to_string(numel > have ? numel : last + 1) + " elements of storage '" +
                               printable(s.s) + "', which holds " + std::to_string(have));
    if (numel == 0 && t.offset > have) fail(codes::kPickle, what + ": offset beyond storage '" + printable(s.s) + "'");
    at::Tensor out = s.storage.as_strided(t.sizes, t.strides, t.offset);
    // The model and `convert` want dense weights; a strided view (rare in state dicts) is copied once here.
    if (!out.is_contiguous()) out = out.contiguous();
    tensors_.emplace(id, out);
    return out;
  }

  std::vector<std::pair<std::string, at::Tensor>> state_dict() {
    if (stack_.size() != 1 || !marks_.empty()) bad("the pickle does not end with exactly one value");
    const Obj& root = obj(stack_[0]);
    if (root.kind != Kind::Dict)
      fail(codes::kCheckpointFormat, where_ + " holds a " + kind_name(root.kind) + ", not a state dict");
    // Python dict semantics: a repeated key keeps its first position and takes the last value.
    std::vector<std::pair<std::string, uint32_t>> order;
    std::unordered_map<std::string, size_t> at;
    for (size_t k = 0; k + 1 < root.items.size(); k += 2) {
      const Obj& key = obj(root.items[k]);
      if (key.kind != Kind::Str) fail(codes::kCheckpointFormat, where_ + ": a state dict key is a " + kind_name(key.kind));
      const uint32_t value = root.items[k + 1];
      if (obj(value).kind != Kind::Tensor)
        fail(codes::kCheckpointFormat, where_ + ": '" + printable(key.s) + "' is a " + kind_name(obj(value).kind) +
                                           ", not a tensor (is this a training checkpoint rather than a state dict?)");
      auto [it, fresh] = at.emplace(key.s, order.size());
      if (fresh) order.emplace_back(key.s, value);
      else order[it->second].second = value;
    }
    std::vector<std::pair<std::string, at::Tensor>> out;
    out.reserve(order.size());
    for (const auto& [name, id] : order) out.emplace_back(name, make_tensor(id, name));
    return out;
  }
};

bool starts_with(const std::string& s, const char* prefix, size_t n) { return s.size() >= n && std::memcmp(s.data(), prefix, n) == 0; }

// What a file that is not a zip archive is, for a message that says what to do.
[[noreturn]] void not_a_zip(const std::string& path) {
  std::string head(64, '\0');
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(codes::kFileNotFound, "file not found: " + path);
  head.resize(std::fread(head.data(), 1, head.size(), f));
  std::fclose(f);
  // The legacy format starts with the pickled magic number 0x1950a86a20f9469cfc6c (LONG1, little-endian).
  static const char kLegacyMagic[] = "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
  if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80 &&
      head.find(std::string(kLegacyMagic, 10)) != std::string::npos)
    fail(codes::kCheckpointFormat,
         path + " is in torch.save's legacy format (before torch 1.6, or _use_new_zipfile_serialization=False), which "
                "can only be read by running its pickle. Convert it once in Python, from a source you trust: "
                "torch.save(torch.load(p, weights_only=True), p) re-saves it in the zip format peft-node reads, or "
                "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True) writes "
                "model.safetensors.");
  if (starts_with(head, "version https://git-lfs", 23))
    fail(codes::kCheckpointFormat, path + " is a Git LFS pointer, not the weights: fetch them with `git lfs pull`");
  if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80)
    fail(codes::kCheckpointFormat, path + " is a bare pickle, not torch.save's zip format; load and re-save it with "
                                          "torch.save in Python, or use save_pretrained(safe_serialization=True)");
  fail(codes::kCheckpointFormat, path + " is not a PyTorch checkpoint (no zip signature" +
                                     std::string(head.empty() ? ": the file is empty)" : ")"));
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> load_torch_checkpoint(const std::string& path) {
  {
    char sig[4] = {0, 0, 0, 0};
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail(codes::kFileNotFound, "file not found: " + path);
    const size_t n = std::fread(sig, 1, 4, f);
    std::fclose(f);
    // Local file header first (an empty archive starts with its end record).
    if (n < 4 || !(std::memcmp(sig, "PK\x03\x04", 4) == 0 || std::memcmp(sig, "PK\x05\x06", 4) == 0)) not_a_zip(path);
  }
  std::shared_ptr<ZipArchive> zip = ZipArchive::open(path);
  // The records sit under one folder whose name varies (archive/, or the file's stem): find it by data.pkl.
  std::string prefix;
  for (const ZipEntry& e : zip->entries()) {
    const size_t slash = e.name.find('/');
    if (slash == std::string::npos || slash == 0 || e.name.compare(slash, std::string::npos, "/data.pkl") != 0) continue;
    if (!prefix.empty()) fail(codes::kZip, path + ": more than one data.pkl ('" + prefix + "/', '" + e.name.substr(0, slash) + "/')");
    prefix = e.name.substr(0, slash);
  }
  if (prefix.empty()) fail(codes::kZip, path + " is a zip archive but not a torch.save checkpoint: it has no <name>/data.pkl");
  if (const ZipEntry* e = zip->find(prefix + "/byteorder")) {
    const std::string order = zip->read(*e);
    if (order == "big")
      fail(codes::kCheckpointFormat, path + " was saved on a big-endian machine; re-save it on a little-endian one");
    if (order != "little") fail(codes::kZip, path + ": unexpected byteorder record '" + order.substr(0, 20) + "'");
  }
  const ZipEntry* pkl = zip->find(prefix + "/data.pkl");
  if (pkl->size > kMaxPickleBytes)
    fail(codes::kPickle, path + ": data.pkl is " + std::to_string(pkl->size) + " bytes, far more than a state dict needs");
  return Unpickler(*zip, prefix, zip->read(*pkl)).run();
}

}  // namespace peft_node
