// On-disk constants of the .ffr record format. docs/FORMAT.md is the prose
// specification; this header mirrors it field by field, and the static_asserts
// tie the structs to the byte widths written there. All integers are
// little-endian on disk; the structs are only used on little-endian hosts
// (checked below), so they can be copied to and from disk as they are.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ffrecord::format {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the on-disk structs are little-endian; a big-endian port must byte-swap");

// ---- v2 ---------------------------------------------------------------------
// Magic chosen like PNG's: a high-bit byte (catches 7-bit channels), CR LF and
// LF (catch newline translation), ^Z (stops DOS `type`). It starts the file and
// ends the footer, so both ends identify the file.
inline constexpr uint8_t kMagic[8] = {0x89, 'F', 'F', 'R', '\r', '\n', 0x1a, '\n'};
inline constexpr uint32_t kVersion2 = 2;

inline constexpr uint32_t kHeaderFlagAligned = 1u << 0;  // records start on `alignment`

struct FileHeader {             // at offset 0
  uint8_t magic[8];             //  0
  uint32_t version;             //  8  == 2
  uint32_t flags;               // 12  kHeaderFlag*
  uint32_t alignment;           // 16  1 = packed, else a power of two <= kMaxAlignment
  uint32_t reserved[2];         // 20  zero
  uint32_t header_crc;          // 28  CRC32C of bytes 0..27
};
static_assert(sizeof(FileHeader) == 32, "FORMAT.md: header is 32 bytes");
inline constexpr size_t kHeaderSize = sizeof(FileHeader);
inline constexpr uint32_t kMaxAlignment = 1u << 20;

// Per-record flags: the low 4 bits name the codec of the stored bytes.
inline constexpr uint32_t kCodecMask = 0xF;
inline constexpr uint32_t kCodecNone = 0;
inline constexpr uint32_t kCodecZstd = 1;
inline constexpr uint32_t kCodecZstdDict = 2;
inline constexpr uint32_t kMaxCodec = kCodecZstdDict;
inline constexpr uint32_t kKnownFlagBits = kCodecMask;

struct IndexEntry {             // one per record, in record order
  uint64_t offset;              //  0  first byte of the stored record
  uint64_t length;              //  8  stored bytes (after the codec)
  uint32_t crc;                 // 16  record CRC (see record_crc in crc32c.h)
  uint32_t flags;               // 20  codec in the low 4 bits, other bits zero
};
static_assert(sizeof(IndexEntry) == 24, "FORMAT.md: index entry is 24 bytes");

struct FileFooter {             // the last 96 bytes of the file
  uint64_t num_records;         //  0
  uint64_t index_offset;        //  8  num_records * 24 bytes of IndexEntry
  uint64_t meta_offset;         // 16  JSON metadata (UTF-8), may be empty
  uint64_t meta_length;         // 24
  uint64_t dict_offset;         // 32  zstd dictionary, may be empty
  uint64_t dict_length;         // 40
  uint64_t keys_offset;         // 48  keys block, may be empty
  uint64_t keys_length;         // 56
  uint32_t index_crc;           // 64  CRC32C of the index bytes
  uint32_t aux_crc;             // 68  CRC32C of meta, then dict, then keys bytes
  uint32_t version;             // 72  == 2 (repeated so the footer stands alone)
  uint32_t reserved[2];         // 76  zero
  uint32_t footer_crc;          // 84  CRC32C of bytes 0..83
  uint8_t magic[8];             // 88  kMagic
};
static_assert(sizeof(FileFooter) == 96, "FORMAT.md: footer is 96 bytes");
inline constexpr size_t kFooterSize = sizeof(FileFooter);

// A v2 header for records aligned to `alignment` (1 = packed), with magic,
// version, flags and checksum filled in.
FileHeader make_header(uint32_t alignment);
// Fills in a footer's version, magic and checksum once its other fields are set.
void seal_footer(FileFooter& footer);

// ---- v1 (read only) ---------------------------------------------------------
// u32 meta_crc | u64 N | u32 crc[N] | u64 offset[N] | data; zlib CRC32.
inline constexpr size_t kV1PrefixSize = 12;
inline constexpr size_t kV1PerRecordIndex = 12;

}  // namespace ffrecord::format
