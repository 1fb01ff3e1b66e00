// The core reports failures as ffrecord::Error: a kind, the file it concerns,
// the record index where one applies, and errno for I/O failures. The bindings
// translate each kind to one Python exception (see bindings.cpp); nothing else
// in the core knows about Python.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace ffrecord {

enum class ErrorKind {
  kFormat,    // not a record file, unsupported version, truncated, bad index
  kChecksum,  // a record, index or header checksum mismatch
  kIo,        // a system call failed; errno() says why
  kIndex,     // record index out of range
  kValue,     // invalid argument or state (closed handle, wrong count, ...)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message, int err = 0)
      : std::runtime_error(std::move(message)), kind_(kind), errno_(err) {}
  ErrorKind kind() const { return kind_; }
  int error_number() const { return errno_; }

 private:
  ErrorKind kind_;
  int errno_;
};

// Helpers that build the messages in one style: "<file>: <what>[ (record i)]".
[[noreturn]] void throw_format(const std::string& file, const std::string& what);
[[noreturn]] void throw_io(const std::string& file, const std::string& what, int err);
[[noreturn]] void throw_value(const std::string& what);

}  // namespace ffrecord
