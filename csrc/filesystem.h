// What kind of filesystem a file lives on, and what that implies for reading
// it: whether other machines serve it (so this node's caches of its size and
// attributes may lag behind a writer on another node), and how long an open
// that finds the file inconsistent keeps re-opening it (docs/SHARED_FS.md).
//
// Detection uses fstatfs's f_type magic; for FUSE, whose magic is shared by
// every FUSE filesystem, the mount table's type (e.g. "fuse.sshfs") names it.
// Results are cached per device, so opening many shards costs one lookup.
// Thread-safe.
#pragma once

#include <cstdint>
#include <string>

namespace ffrecord {

enum class FilesystemClass {
  kLocal,    // a disk or memory filesystem of this machine
  kNetwork,  // NFS, SMB/CIFS, Lustre, CephFS, GPFS, BeeGFS, ...
  kFuse,     // a userspace filesystem: often a network one (sshfs, s3fs, ...)
  kUnknown,  // a magic this build does not know
};

struct FilesystemInfo {
  uint64_t magic = 0;
  std::string name;  // "ext4", "nfs", "fuse.sshfs", ..., or "unknown (0x...)"
  FilesystemClass kind = FilesystemClass::kUnknown;

  // True where another machine may change the file behind this node's caches:
  // network and FUSE filesystems, and unknown ones (to be safe).
  bool shared() const { return kind != FilesystemClass::kLocal; }
};

// The filesystem holding the open file `fd`. Never throws: a failed fstatfs
// gives kind kUnknown.
FilesystemInfo filesystem_of(int fd);

// How long (seconds) RecordFile::open keeps re-opening a file that looks
// inconsistent before reporting it: FFRECORD_REOPEN_WAIT (0..600) where set,
// else 2 on shared filesystems. Always 0 on local filesystems, where a rename
// is atomic for every opener and an inconsistent file is real damage. Throws
// Error(kValue) when the variable is not a number in range, on any filesystem.
double reopen_wait_seconds(const FilesystemInfo& fs);

// True for an mmap() errno that means this filesystem (or this mount's
// options) does not support the mapping: ENODEV (e.g. FUSE direct_io and
// MAP_SHARED), EINVAL, EACCES, EPERM, ENOTSUP/EOPNOTSUPP, ENOSYS. ENOMEM,
// EAGAIN, ENFILE and the like are resource limits, not the filesystem's.
bool mapping_refused(int err);

}  // namespace ffrecord
