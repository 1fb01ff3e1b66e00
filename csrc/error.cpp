#include "error.h"

#include <cstring>

namespace ffrecord {

void throw_format(const std::string& file, const std::string& what) {
  throw Error(ErrorKind::kFormat, file + ": " + what);
}

void throw_io(const std::string& file, const std::string& what, int err) {
  throw Error(ErrorKind::kIo, file + ": " + what + ": " + std::strerror(err), err);
}

void throw_value(const std::string& what) { throw Error(ErrorKind::kValue, what); }

}  // namespace ffrecord
