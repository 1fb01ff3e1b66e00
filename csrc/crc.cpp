#include "crc.h"

#include <cstdlib>
#include <cstring>
#include <initializer_list>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ffrecord {
namespace {

constexpr uint32_t kPolyCastagnoli = 0x82F63B78u;  // reflected
constexpr uint32_t kPolyIeee = 0xEDB88320u;        // reflected

// Slicing-by-8 tables, built once at load time.
struct Tables {
  uint32_t t[8][256];
  explicit Tables(uint32_t poly) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ poly : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};

const Tables& castagnoli_tables() { static const Tables tables(kPolyCastagnoli); return tables; }
const Tables& ieee_tables() { static const Tables tables(kPolyIeee); return tables; }

// Raw register update (no pre/post inversion).
uint32_t table_update(const Tables& tb, uint32_t c, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    uint32_t lo = static_cast<uint32_t>(w) ^ c;
    uint32_t hi = static_cast<uint32_t>(w >> 32);
    c = tb.t[7][lo & 0xFF] ^ tb.t[6][(lo >> 8) & 0xFF] ^ tb.t[5][(lo >> 16) & 0xFF] ^
        tb.t[4][lo >> 24] ^ tb.t[3][hi & 0xFF] ^ tb.t[2][(hi >> 8) & 0xFF] ^
        tb.t[1][(hi >> 16) & 0xFF] ^ tb.t[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ tb.t[0][(c ^ *p++) & 0xFF];
  return c;
}

#if defined(__x86_64__)
// The hardware path runs three independent CRC streams over three adjacent
// lanes (the crc32 instruction has 3-cycle latency but 1-cycle throughput) and
// joins them with a "shift by lane length" operator: the register of A||B is
// shift_|B|(reg(A)) ^ reg0(B). The shift is a GF(2) linear map, tabulated here.
constexpr size_t kLongLane = 8192;
constexpr size_t kShortLane = 256;

uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec; vec >>= 1, ++mat)
    if (vec & 1) sum ^= *mat;
  return sum;
}
void gf2_square(uint32_t* sq, const uint32_t* mat) {
  for (int n = 0; n < 32; ++n) sq[n] = gf2_times(mat, mat[n]);
}

// Tables that multiply a register by x^(8*len) modulo the polynomial.
struct ShiftTable {
  uint32_t t[4][256];
  explicit ShiftTable(size_t len) {
    uint32_t op[32], sq[32];
    // Operator for one zero bit, then square up to one zero byte (8 bits).
    op[0] = kPolyCastagnoli;
    for (int n = 1; n < 32; ++n) op[n] = 1u << (n - 1);
    gf2_square(sq, op);   // 2 bits
    gf2_square(op, sq);   // 4 bits
    gf2_square(sq, op);   // 8 bits = one byte, in sq
    // Binary powering over len bytes.
    uint32_t result[32];
    for (int n = 0; n < 32; ++n) result[n] = 1u << n;  // identity
    uint32_t* base = sq;
    uint32_t* spare = op;
    for (size_t k = len; k; k >>= 1) {
      if (k & 1) {
        uint32_t tmp[32];
        for (int n = 0; n < 32; ++n) tmp[n] = gf2_times(base, result[n]);
        std::memcpy(result, tmp, sizeof(tmp));
      }
      gf2_square(spare, base);
      uint32_t* s = base; base = spare; spare = s;
    }
    for (int b = 0; b < 4; ++b)
      for (uint32_t v = 0; v < 256; ++v) t[b][v] = gf2_times(result, v << (8 * b));
  }
  uint32_t shift(uint32_t c) const {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
  }
};

// Consumes as many whole groups of three `lane`-byte lanes as fit.
__attribute__((target("sse4.2"))) uint64_t hw_lanes(uint64_t c0, const uint8_t*& p, size_t& n, size_t lane,
                                                   const ShiftTable& sh) {
  while (n >= 3 * lane) {
    uint64_t c1 = 0, c2 = 0;
    const uint8_t* end = p + lane;
    do {
      uint64_t a, b, d;
      std::memcpy(&a, p, 8);
      std::memcpy(&b, p + lane, 8);
      std::memcpy(&d, p + 2 * lane, 8);
      c0 = _mm_crc32_u64(c0, a);
      c1 = _mm_crc32_u64(c1, b);
      c2 = _mm_crc32_u64(c2, d);
      p += 8;
    } while (p < end);
    c0 = sh.shift(static_cast<uint32_t>(c0)) ^ c1;
    c0 = sh.shift(static_cast<uint32_t>(c0)) ^ c2;
    p += 2 * lane;
    n -= 3 * lane;
  }
  return c0;
}

__attribute__((target("sse4.2"))) uint32_t hw_update(uint32_t c, const uint8_t* p, size_t n) {
  static const ShiftTable long_shift(kLongLane);
  static const ShiftTable short_shift(kShortLane);
  uint64_t c0 = c;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *p++);
    --n;
  }
  c0 = hw_lanes(c0, p, n, kLongLane, long_shift);
  c0 = hw_lanes(c0, p, n, kShortLane, short_shift);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c0 = _mm_crc32_u64(c0, w);
    p += 8;
    n -= 8;
  }
  while (n--) c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *p++);
  return static_cast<uint32_t>(c0);
}

bool cpu_has_sse42() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}

// ---- carry-less folding (AVX-512 + VPCLMULQDQ) ------------------------------
// Long buffers are folded 256 bytes at a time in 16 independent 128-bit lanes,
// which the carry-less multiplier runs at several times the rate of the
// crc32 instruction. A pending 16-byte chunk X = Xh*x^64 + Xl (Xh = its first
// 8 bytes in memory) moved d bytes forward becomes X*x^(8d) mod P =
// Xh*(x^(8d+64) mod P) + Xl*(x^(8d) mod P), a 96-bit value XORed into the data
// there. Bytes are bit-reflected, so a 64-bit multiply of reflected operands
// lands one bit low: the constants are taken one power of x lower to match.
// The last chunk is finished with the crc32 instruction.

// x^n mod P, P = the CRC32C polynomial in normal form, bit j = coefficient of x^j.
uint32_t xpow_mod(unsigned n) {
  uint64_t v = 1;
  for (unsigned i = 0; i < n; ++i) {
    v <<= 1;
    if (v & (uint64_t(1) << 32)) v ^= (uint64_t(1) << 32) | 0x1EDC6F41u;
  }
  return static_cast<uint32_t>(v);
}

// A 32-bit polynomial as a reflected 64-bit operand: x^j at bit 63-j.
uint64_t reflect64(uint32_t poly) {
  uint64_t r = 0;
  for (int j = 0; j < 32; ++j)
    if (poly & (1u << j)) r |= uint64_t(1) << (63 - j);
  return r;
}

struct FoldPair {
  uint64_t for_first_half;   // multiplies the chunk's first 8 bytes
  uint64_t for_second_half;  // multiplies its last 8 bytes
};

FoldPair fold_constants(unsigned distance_bytes) {  // distance_bytes >= 1
  return {reflect64(xpow_mod(8 * distance_bytes + 64 - 1)), reflect64(xpow_mod(8 * distance_bytes - 1))};
}

constexpr size_t kFoldBlock = 256;

struct FoldTables {
  FoldPair main;            // distance 256: one loop iteration
  FoldPair to_last[15];     // lane i of the last block -> lane 15 (16 * (15 - i) bytes on)
  FoldTables() {
    main = fold_constants(kFoldBlock);
    for (unsigned i = 0; i < 15; ++i) to_last[i] = fold_constants(16 * (15 - i));
  }
};

template <bool kStream>
__attribute__((target("avx512f"))) inline void store64(uint8_t* dst, __m512i v) {
  if (kStream) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), v);
  } else {
    _mm512_storeu_si512(dst, v);
  }
}

// Four 128-bit lanes of x moved 256 bytes forward, XORed into the data there.
__attribute__((target("avx512f,vpclmulqdq"))) inline __m512i fold_with(__m512i x, __m512i k, __m512i next) {
  __m512i a = _mm512_clmulepi64_epi128(x, k, 0x00);
  __m512i b = _mm512_clmulepi64_epi128(x, k, 0x11);
  return _mm512_ternarylogic_epi64(a, b, next, 0x96);  // a ^ b ^ next
}

// The 16 pending lanes of the last block folded into lane 15, then finished
// with the crc32 instruction: the register after the folded bytes.
__attribute__((target("pclmul,sse4.2"))) uint32_t reduce_lanes(const uint64_t* lanes, const FoldTables& k) {
  __m128i acc = _mm_load_si128(reinterpret_cast<const __m128i*>(lanes + 30));
  for (int i = 0; i < 15; ++i) {
    const __m128i x = _mm_load_si128(reinterpret_cast<const __m128i*>(lanes + 2 * i));
    const __m128i kk = _mm_set_epi64x(static_cast<long long>(k.to_last[i].for_second_half),
                                      static_cast<long long>(k.to_last[i].for_first_half));
    acc = _mm_xor_si128(acc, _mm_xor_si128(_mm_clmulepi64_si128(x, kk, 0x00), _mm_clmulepi64_si128(x, kk, 0x11)));
  }
  uint64_t crc = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(acc)));
  crc = _mm_crc32_u64(crc, static_cast<uint64_t>(_mm_extract_epi64(acc, 1)));
  return static_cast<uint32_t>(crc);
}

// Folds every whole 256-byte block of p (at least two) into the register c
// and finishes the rest with the crc32 instruction. With kCopy, every 64
// bytes loaded are also stored to dst, so a copy and its checksum share one
// read of the source.
// kStream: dst is 64-byte aligned and the stores bypass the cache (see
// fold_copy_update).
template <bool kCopy, bool kStream = false>
__attribute__((target("avx512f,vpclmulqdq,pclmul,sse4.2"))) uint32_t fold_blocks(uint32_t c, uint8_t* dst,
                                                                                  const uint8_t* p, size_t n) {
  static const FoldTables k;
  const __m512i kmain = _mm512_set_epi64(
      static_cast<long long>(k.main.for_second_half), static_cast<long long>(k.main.for_first_half),
      static_cast<long long>(k.main.for_second_half), static_cast<long long>(k.main.for_first_half),
      static_cast<long long>(k.main.for_second_half), static_cast<long long>(k.main.for_first_half),
      static_cast<long long>(k.main.for_second_half), static_cast<long long>(k.main.for_first_half));
  __m512i x[4];
  for (int j = 0; j < 4; ++j) {
    x[j] = _mm512_loadu_si512(p + 64 * j);
    if (kCopy) store64<kStream>(dst + 64 * j, x[j]);
  }
  // Starting from register c equals XORing c into the first 4 data bytes.
  x[0] = _mm512_xor_si512(x[0], _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(c))));
  p += kFoldBlock;
  if (kCopy) dst += kFoldBlock;
  n -= kFoldBlock;
  while (n >= kFoldBlock) {
    for (int j = 0; j < 4; ++j) {
      const __m512i d = _mm512_loadu_si512(p + 64 * j);
      if (kCopy) store64<kStream>(dst + 64 * j, d);
      x[j] = fold_with(x[j], kmain, d);
    }
    p += kFoldBlock;
    if (kCopy) dst += kFoldBlock;
    n -= kFoldBlock;
  }
  alignas(64) uint64_t lanes[32];
  for (int j = 0; j < 4; ++j) _mm512_store_si512(lanes + 8 * j, x[j]);
  if (kCopy) {
    std::memcpy(dst, p, n);
    p = dst;
  }
  return hw_update(reduce_lanes(lanes, k), p, n);
}

uint32_t fold_update(uint32_t c, const uint8_t* p, size_t n) {
  if (n < 2 * kFoldBlock) return hw_update(c, p, n);
  return fold_blocks<false>(c, nullptr, p, n);
}

// Copies of at least this many bytes store around the cache. The copy then
// moves each destination line once instead of reading it in first (a third
// less memory traffic), and a large batch does not push the caller's working
// set out of the cache; what the consumer reads later comes from memory
// either way, since a batch of such records outgrows the per-core cache.
constexpr size_t kStreamFrom = 64 << 10;

uint32_t fold_copy_update(uint32_t c, uint8_t* dst, const uint8_t* p, size_t n) {
  if (n < 2 * kFoldBlock) {
    std::memcpy(dst, p, n);
    return hw_update(c, dst, n);
  }
  if (n < kStreamFrom) return fold_blocks<true>(c, dst, p, n);
  // Streaming stores need an aligned destination: the bytes before the
  // first 64-byte boundary go the ordinary way.
  const size_t head = (64 - reinterpret_cast<uintptr_t>(dst) % 64) % 64;
  std::memcpy(dst, p, head);
  c = hw_update(c, dst, head);
  c = fold_blocks<true, true>(c, dst + head, p + head, n - head);
  _mm_sfence();  // the streamed lines are visible before the batch is handed over
  return c;
}

bool cpu_has_fold() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq") &&
         __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.2");
}
#endif

uint32_t sw_update(uint32_t c, const uint8_t* p, size_t n) {
  return table_update(castagnoli_tables(), c, p, n);
}

using UpdateFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);
using CopyUpdateFn = uint32_t (*)(uint32_t, uint8_t*, const uint8_t*, size_t);

// A fast path is used only if it agrees with the table on a self-test, so a
// mistake in one (or an odd CPU) costs speed, never correctness.
bool agrees_with_table(UpdateFn fn) {
  uint8_t buf[4096 + 77];
  uint32_t x = 0x12345678u;
  for (auto& b : buf) {
    x = x * 1103515245u + 12345u;
    b = static_cast<uint8_t>(x >> 24);
  }
  for (size_t n : {size_t(0), size_t(1), size_t(511), size_t(512), size_t(513), size_t(1000), sizeof(buf)})
    for (size_t off : {size_t(0), size_t(3)})
      if (n + off <= sizeof(buf) && fn(0xFFFFFFFFu, buf + off, n) != sw_update(0xFFFFFFFFu, buf + off, n))
        return false;
  return true;
}

UpdateFn choose_update() {
  const char* force = std::getenv("FFRECORD_CRC32C");
  if (force && std::strcmp(force, "table") == 0) return sw_update;
#if defined(__x86_64__)
  bool no_fold = force && std::strcmp(force, "sse4.2") == 0;
  if (!no_fold && cpu_has_fold() && agrees_with_table(fold_update)) return fold_update;
  if (cpu_has_sse42() && agrees_with_table(hw_update)) return hw_update;
#endif
  return sw_update;
}

const UpdateFn g_update = choose_update();

// Without the folding path: copy a slice, then checksum it while it is still
// in the cache (the slice is a whole number of the SSE4.2 path's lane groups).
uint32_t chunked_copy_update(uint32_t c, uint8_t* dst, const uint8_t* src, size_t n) {
  constexpr size_t kSlice = 48 << 10;
  while (n) {
    size_t k = n < kSlice ? n : kSlice;
    std::memcpy(dst, src, k);
    c = g_update(c, dst, k);
    dst += k;
    src += k;
    n -= k;
  }
  return c;
}

// The fused copy is used only where it matches the table on the same
// self-test, both in the checksum and in the bytes it copied.
bool copy_agrees_with_table(CopyUpdateFn fn) {
  static uint8_t src[(80 << 10) + 77], dst[(80 << 10) + 80];  // reaches the streaming path
  uint32_t x = 0x9E3779B9u;
  for (auto& b : src) {
    x = x * 1103515245u + 12345u;
    b = static_cast<uint8_t>(x >> 24);
  }
  for (size_t n : {size_t(0), size_t(1), size_t(255), size_t(511), size_t(512), size_t(513), size_t(4097),
                   size_t(8192 + 74), sizeof(src) - 3})
    for (size_t off : {size_t(0), size_t(3)}) {
      if (n + off > sizeof(src)) continue;
      std::memset(dst, 0xA5, sizeof(dst));
      if (fn(0xFFFFFFFFu, dst + 3 - off, src + off, n) != sw_update(0xFFFFFFFFu, src + off, n)) return false;
      if (std::memcmp(dst + 3 - off, src + off, n) != 0 || dst[3 - off + n] != 0xA5) return false;
    }
  return true;
}

CopyUpdateFn choose_copy_update() {
#if defined(__x86_64__)
  if (g_update == fold_update && copy_agrees_with_table(fold_copy_update)) return fold_copy_update;
#endif
  return chunked_copy_update;
}

const CopyUpdateFn g_copy_update = choose_copy_update();

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  return ~g_update(~crc, static_cast<const uint8_t*>(data), n);
}

uint32_t crc32c_copy(void* dst, const void* src, size_t n, uint32_t crc) {
  return ~g_copy_update(~crc, static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), n);
}

uint32_t crc32_ieee(const void* data, size_t n, uint32_t crc) {
  return ~table_update(ieee_tables(), ~crc, static_cast<const uint8_t*>(data), n);
}

const char* crc32c_impl() {
#if defined(__x86_64__)
  if (g_update == fold_update) return "avx512-vpclmulqdq";
  if (g_update == hw_update) return "sse4.2";
#endif
  return "table";
}

namespace {

// Extends a record's CRC32C over its little-endian u64 length and u32 flags.
uint32_t with_trailer(uint32_t crc, uint64_t length, uint32_t flags) {
  alignas(8) uint8_t trailer[12];
  std::memcpy(trailer, &length, 8);
  std::memcpy(trailer + 8, &flags, 4);
  return crc32c(trailer, sizeof(trailer), crc);
}

}  // namespace

uint32_t record_crc(const void* data, uint64_t length, uint32_t flags) {
  return with_trailer(crc32c(data, length), length, flags);
}

uint32_t record_crc_copy(void* dst, const void* src, uint64_t length, uint32_t flags) {
  return with_trailer(crc32c_copy(dst, src, length), length, flags);
}

}  // namespace ffrecord
