#include "format.h"

#include <cstring>

#include "crc.h"

namespace ffrecord::format {

FileHeader make_header(uint32_t alignment) {
  FileHeader h{};
  std::memcpy(h.magic, kMagic, sizeof(h.magic));
  h.version = kVersion2;
  h.flags = alignment > 1 ? kHeaderFlagAligned : 0;
  h.alignment = alignment;
  h.header_crc = crc32c(&h, offsetof(FileHeader, header_crc));
  return h;
}

void seal_footer(FileFooter& footer) {
  footer.version = kVersion2;
  std::memcpy(footer.magic, kMagic, sizeof(footer.magic));
  footer.footer_crc = crc32c(&footer, offsetof(FileFooter, footer_crc));
}

}  // namespace ffrecord::format
