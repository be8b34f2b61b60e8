#include "core/zip_reader.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "core/errors.h"

namespace peft_node {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kEndSize = 22, kZip64LocatorSize = 20, kZip64EndSize = 56, kCentralSize = 46, kLocalSize = 30;

uint16_t u16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t u32(const unsigned char* p) { return u16(p) | (static_cast<uint32_t>(u16(p + 2)) << 16); }
uint64_t u64(const unsigned char* p) { return u32(p) | (static_cast<uint64_t>(u32(p + 4)) << 32); }


// The zip64 extended-information extra field (id 1) replaces, in this order, each of the 32-bit fields that hold
// 0xFFFFFFFF: uncompressed size, compressed size, local header offset.
struct Zip64Fields {
  uint64_t* values[3];
  bool present[3];
};

void apply_zip64_extra(const unsigned char* extra, uint64_t len, Zip64Fields f, const std::string& where) {
  uint64_t pos = 0;
  while (pos + 4 <= len) {
    const uint16_t id = u16(extra + pos), n = u16(extra + pos + 2);
    if (pos + 4 + n > len) fail(codes::kZip, where + ": an extra field runs past its header");
    if (id == 0x0001) {
      uint64_t at = 0;
      for (int i = 0; i < 3; ++i) {
        if (!f.present[i]) continue;
        if (at + 8 > n) fail(codes::kZip, where + ": zip64 extra field too short for the sizes it replaces");
        *f.values[i] = u64(extra + pos + 4 + at);
        at += 8;
        f.present[i] = false;
      }
    }
    pos += 4 + n;
  }
  for (bool missing : f.present)
    if (missing) fail(codes::kZip, where + ": a size or offset is 0xFFFFFFFF but there is no zip64 extra field");
}

}  // namespace

uint32_t crc32(const unsigned char* data, size_t n) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::shared_ptr<ZipArchive> ZipArchive::open(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) fail(codes::kFileNotFound, "file not found: " + path);
  if (!S_ISREG(st.st_mode)) fail(codes::kIo, "not a regular file: " + path);
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < kEndSize)
    fail(codes::kZip, path + ": " + std::to_string(size) + " bytes is too small for a zip archive (truncated?)");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(codes::kIo, "cannot open " + path + ": " + std::strerror(errno));
  // MAP_PRIVATE + PROT_WRITE: copy-on-write, so an in-place update of a weight viewing the file never reaches it.
  void* map = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int saved_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) fail(codes::kIo, "cannot mmap " + path + ": " + std::strerror(saved_errno));
  std::shared_ptr<ZipArchive> z(new ZipArchive());
  z->self_ = z;
  z->path_ = path;
  z->map_ = static_cast<unsigned char*>(map);
  z->size_ = size;
  z->parse();
  return z;
}

ZipArchive::~ZipArchive() {
  if (map_) ::munmap(map_, size_);
}

void ZipArchive::parse() {
  const unsigned char* b = map_;
  // End of central directory: the last record with its signature whose comment fits in the file.
  uint64_t end = UINT64_MAX;
  const uint64_t lowest = size_ > kEndSize + 0xFFFF ? size_ - kEndSize - 0xFFFF : 0;
  for (uint64_t p = size_ - kEndSize + 1; p-- > lowest;) {
    if (u32(b + p) == kEndSig && p + kEndSize + u16(b + p + 20) <= size_) {
      end = p;
      break;
    }
  }
  if (end == UINT64_MAX)
    fail(codes::kZip, path_ + ": no end-of-central-directory record: the file is truncated or not a zip archive");
  uint64_t count = u16(b + end + 10), cd_size = u32(b + end + 12), cd_offset = u32(b + end + 16);
  uint64_t cd_limit = end;  // the central directory lies before the end records
  if (u16(b + end + 4) != 0 || u16(b + end + 6) != 0 || u16(b + end + 8) != count)
    fail(codes::kZip, path_ + ": multi-disk zip archives are not supported");
  // torch.save always writes the zip64 end records; their fields take precedence over the 16/32-bit ones.
  if (end >= kZip64LocatorSize && u32(b + end - kZip64LocatorSize) == kZip64LocatorSig) {
    const unsigned char* loc = b + end - kZip64LocatorSize;
    const uint64_t z64 = u64(loc + 8);
    if (u32(loc + 4) != 0 || u32(loc + 16) > 1) fail(codes::kZip, path_ + ": multi-disk zip64 archives are not supported");
    if (z64 > end - kZip64LocatorSize || end - kZip64LocatorSize - z64 < kZip64EndSize || u32(b + z64) != kZip64EndSig)
      fail(codes::kZip, path_ + ": the zip64 locator points to no zip64 end-of-central-directory record");
    if (u32(b + z64 + 16) != 0 || u32(b + z64 + 20) != 0 || u64(b + z64 + 24) != u64(b + z64 + 32))
      fail(codes::kZip, path_ + ": multi-disk zip64 archives are not supported");
    count = u64(b + z64 + 32);
    cd_size = u64(b + z64 + 40);
    cd_offset = u64(b + z64 + 48);
    cd_limit = z64;
  } else if (count == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF) {
    fail(codes::kZip, path_ + ": the end record defers to zip64 records that are missing (truncated?)");
  }
  if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset)
    fail(codes::kZip, path_ + ": the central directory (offset " + std::to_string(cd_offset) + ", " +
                          std::to_string(cd_size) + " bytes) lies outside the file (truncated?)");
  if (count > cd_size / kCentralSize)
    fail(codes::kZip, path_ + ": " + std::to_string(count) + " entries cannot fit in a central directory of " +
                          std::to_string(cd_size) + " bytes");

  entries_.reserve(count);
  uint64_t pos = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < count; ++i) {
    const std::string at = path_ + ": central directory entry " + std::to_string(i);
    if (cd_end - pos < kCentralSize || u32(b + pos) != kCentralSig)
      fail(codes::kZip, at + " is missing or has a bad signature");
    const unsigned char* c = b + pos;
    const uint16_t flags = u16(c + 8), method = u16(c + 10);
    const uint64_t name_len = u16(c + 28), extra_len = u16(c + 30), comment_len = u16(c + 32);
    if (cd_end - pos - kCentralSize < name_len + extra_len + comment_len)
      fail(codes::kZip, at + " runs past the end of the central directory");
    ZipEntry e;
    e.name.assign(reinterpret_cast<const char*>(c + kCentralSize), name_len);
    e.crc32 = u32(c + 16);
    const std::string where = path_ + ": entry '" + printable(e.name) + "'";
    uint64_t csize = u32(c + 20), usize = u32(c + 24), local = u32(c + 42);
    apply_zip64_extra(c + kCentralSize + name_len, extra_len,
                      {{&usize, &csize, &local}, {usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, local == 0xFFFFFFFF}}, where);
    if (flags & 1) fail(codes::kZip, where + " is encrypted");
    if (method != 0)
      fail(codes::kZip, where + " is compressed (method " + std::to_string(method) + "); torch.save writes "
                            "uncompressed entries, so the file was re-packed: load and save it again with torch");
    if (csize != usize) fail(codes::kZip, where + ": a stored entry's compressed and uncompressed sizes differ");

    // The local header must agree with the central directory (torch puts its sizes in a trailing data descriptor:
    // flag bit 3, zeros here).
    if (local > cd_offset || cd_offset - local < kLocalSize || u32(b + local) != kLocalSig)
      fail(codes::kZip, where + ": no local header at offset " + std::to_string(local));
    const unsigned char* l = b + local;
    const uint64_t lname = u16(l + 26), lextra = u16(l + 28);
    if (cd_offset - local - kLocalSize < lname + lextra)
      fail(codes::kZip, where + ": local header runs into the central directory");
    if (lname != name_len || std::memcmp(l + kLocalSize, e.name.data(), name_len) != 0)
      fail(codes::kZip, where + ": the local header names a different entry");
    if (u16(l + 8) != method) fail(codes::kZip, where + ": local and central headers disagree on the method");
    if (!(u16(l + 6) & 8)) {
      uint64_t lc = u32(l + 18), lu = u32(l + 22);
      apply_zip64_extra(l + kLocalSize + lname, lextra, {{&lu, &lc, nullptr}, {lu == 0xFFFFFFFF, lc == 0xFFFFFFFF, false}},
                        where + " (local header)");
      if (lc != csize || lu != usize || u32(l + 14) != e.crc32)
        fail(codes::kZip, where + ": local and central headers disagree on size or CRC");
    }
    e.data_offset = local + kLocalSize + lname + lextra;
    e.size = usize;
    if (e.size > cd_offset - e.data_offset)
      fail(codes::kZip, where + ": its " + std::to_string(e.size) + " bytes at offset " +
                            std::to_string(e.data_offset) + " run past the data area (truncated?)");
    if (!by_name_.emplace(e.name, entries_.size()).second) fail(codes::kZip, where + " appears twice");
    entries_.push_back(std::move(e));
    pos += kCentralSize + name_len + extra_len + comment_len;
  }
}

const ZipEntry* ZipArchive::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

std::string ZipArchive::read(const ZipEntry& e) const {
  std::string out(reinterpret_cast<const char*>(map_ + e.data_offset), e.size);
  if (crc32(map_ + e.data_offset, e.size) != e.crc32)
    fail(codes::kZip, path_ + ": entry '" + printable(e.name) + "' fails its CRC-32 check (corrupted file)");
  return out;
}

at::Tensor ZipArchive::tensor(const ZipEntry& e, at::ScalarType dtype, int64_t numel) const {
  unsigned char* ptr = map_ + e.data_offset;
  const auto opts = at::TensorOptions().dtype(dtype).device(at::kCPU);
  const size_t esize = c10::elementSize(dtype);
  // torch aligns entries to 64 bytes (.storage_alignment); other writers may not, and a view needs alignment.
  if (numel == 0 || reinterpret_cast<uintptr_t>(ptr) % esize != 0) {
    at::Tensor out = at::empty({numel}, opts);
    if (numel > 0) std::memcpy(out.data_ptr(), ptr, static_cast<size_t>(numel) * esize);
    return out;
  }
  std::shared_ptr<const ZipArchive> keep = self_.lock();
  return at::from_blob(ptr, {numel}, [keep](void*) {}, opts);
}

}  // namespace peft_node
