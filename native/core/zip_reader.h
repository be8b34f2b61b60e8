// Reading the zip archives torch.save writes (stored, uncompressed entries; zip64 records for big files). The file is
// mmapped copy-on-write, so an entry's bytes are a view of the mapping and multi-GB checkpoints are never read
// through. The central directory, every local header and every offset and size are checked against the file before
// any entry is handed out; whatever does not fit is ERR_ZIP naming the file and the entry.
#pragma once
#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace peft_node {

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // of the entry's bytes in the file (past the local header)
  uint64_t size = 0;
  uint32_t crc32 = 0;
};

class ZipArchive {
 public:
  // Maps and validates `path` (ERR_FILE_NOT_FOUND, ERR_IO, ERR_ZIP).
  static std::shared_ptr<ZipArchive> open(const std::string& path);
  ~ZipArchive();
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;

  // A copy of a (small) entry, its CRC-32 verified: for data.pkl and the text records.
  std::string read(const ZipEntry& e) const;

  // `numel` elements of `dtype` from the start of `e` (the caller checked numel x size == e.size): a view of the
  // mapping that keeps the archive mapped, or a copy when the bytes are not aligned for the dtype.
  at::Tensor tensor(const ZipEntry& e, at::ScalarType dtype, int64_t numel) const;

 private:
  ZipArchive() = default;
  void parse();

  std::string path_;
  unsigned char* map_ = nullptr;
  uint64_t size_ = 0;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
  std::weak_ptr<ZipArchive> self_;
};

// CRC-32 (IEEE, as zip uses).
uint32_t crc32(const unsigned char* data, size_t n);

}  // namespace peft_node
