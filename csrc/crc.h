// Checksums used by the format: CRC32C (Castagnoli) for v2 and the zlib CRC32
// (IEEE) for legacy v1 files. Both take and return the finalised value, so a
// checksum can be extended: crc32c(b, crc32c(a)) == crc32c(a + b).
// Thread-safe; the CRC32C implementation (AVX-512 folding, SSE4.2 or table)
// is chosen once, at load time, after a self-test.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ffrecord {

uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
uint32_t crc32_ieee(const void* data, size_t n, uint32_t crc = 0);

// Copies n bytes from src to dst and returns the CRC32C of them (extending
// `crc`), reading the source once: with AVX-512 the checksum is folded from
// the same registers the copy moves, so it costs almost nothing beside the
// copy. Copies of 64 KiB and more store around the CPU cache (the destination
// is not read in first). The ranges must not overlap.
uint32_t crc32c_copy(void* dst, const void* src, size_t n, uint32_t crc = 0);

// "avx512-vpclmulqdq", "sse4.2" or "table": which CRC32C implementation this CPU runs.
const char* crc32c_impl();

// The v2 record checksum: CRC32C over the stored bytes, extended with the
// little-endian u64 length and u32 flags, so a length or codec that is wrong
// in a consistent index still fails verification.
uint32_t record_crc(const void* data, uint64_t length, uint32_t flags);

// record_crc of the bytes copied from src to dst (see crc32c_copy).
uint32_t record_crc_copy(void* dst, const void* src, uint64_t length, uint32_t flags);

}  // namespace ffrecord
