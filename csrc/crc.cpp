#include "crc.h"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
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
#endif

uint32_t sw_update(uint32_t c, const uint8_t* p, size_t n) {
  return table_update(castagnoli_tables(), c, p, n);
}

using UpdateFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);

UpdateFn choose_update() {
  if (const char* force = std::getenv("FFRECORD_CRC32C"); force && std::strcmp(force, "table") == 0)
    return sw_update;
#if defined(__x86_64__)
  if (cpu_has_sse42()) return hw_update;
#endif
  return sw_update;
}

const UpdateFn g_update = choose_update();

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  return ~g_update(~crc, static_cast<const uint8_t*>(data), n);
}

uint32_t crc32_ieee(const void* data, size_t n, uint32_t crc) {
  return ~table_update(ieee_tables(), ~crc, static_cast<const uint8_t*>(data), n);
}

const char* crc32c_impl() { return g_update == sw_update ? "table" : "sse4.2"; }

uint32_t record_crc(const void* data, uint64_t length, uint32_t flags) {
  uint8_t trailer[12];
  std::memcpy(trailer, &length, 8);
  std::memcpy(trailer + 8, &flags, 4);
  return crc32c(trailer, sizeof(trailer), crc32c(data, length));
}

}  // namespace ffrecord
