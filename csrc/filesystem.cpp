#include "filesystem.h"

#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

#include "error.h"

namespace ffrecord {
namespace {

struct KnownFs {
  uint64_t magic;
  const char* name;
  FilesystemClass kind;
};

// f_type values from linux/magic.h (and the vendors' headers for the
// out-of-tree parallel filesystems).
constexpr KnownFs kKnown[] = {
    {0xEF53, "ext4", FilesystemClass::kLocal},  // also ext2/ext3
    {0x58465342, "xfs", FilesystemClass::kLocal},
    {0x9123683E, "btrfs", FilesystemClass::kLocal},
    {0xF2F52010, "f2fs", FilesystemClass::kLocal},
    {0x2FC12FC1, "zfs", FilesystemClass::kLocal},
    {0xCA451A4E, "bcachefs", FilesystemClass::kLocal},
    {0x01021994, "tmpfs", FilesystemClass::kLocal},
    {0x858458F6, "ramfs", FilesystemClass::kLocal},
    {0x794C7630, "overlayfs", FilesystemClass::kLocal},
    {0x73717368, "squashfs", FilesystemClass::kLocal},
    {0xE0F5E1E2, "erofs", FilesystemClass::kLocal},
    {0x4D44, "vfat", FilesystemClass::kLocal},
    {0x2011BAB0, "exfat", FilesystemClass::kLocal},
    {0x3153464A, "jfs", FilesystemClass::kLocal},
    {0x52654973, "reiserfs", FilesystemClass::kLocal},
    {0x6969, "nfs", FilesystemClass::kNetwork},
    {0x0BD00BD0, "lustre", FilesystemClass::kNetwork},
    {0x00C36400, "cephfs", FilesystemClass::kNetwork},
    {0x47504653, "gpfs", FilesystemClass::kNetwork},
    {0x19830326, "beegfs", FilesystemClass::kNetwork},
    {0xFE534D42, "smb2", FilesystemClass::kNetwork},
    {0xFF534D42, "cifs", FilesystemClass::kNetwork},
    {0x517B, "smb", FilesystemClass::kNetwork},
    {0x01021997, "9p", FilesystemClass::kNetwork},
    {0x5346414F, "afs", FilesystemClass::kNetwork},
    {0x6B414653, "afs", FilesystemClass::kNetwork},
    {0xAAD7AAEA, "panfs", FilesystemClass::kNetwork},
    {0x65735546, "fuse", FilesystemClass::kFuse},
};

// The mount table's type of the filesystem on device `dev` ("fuse.sshfs"),
// or "" when /proc/self/mountinfo does not say.
std::string mount_type(dev_t dev) {
  std::ifstream in("/proc/self/mountinfo");
  const std::string want = std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
  for (std::string line; std::getline(in, line);) {
    // "<id> <parent> <major:minor> <root> <mount point> <options> [tags] - <type> <source> <options>"
    std::istringstream f(line);
    std::string id, parent, devno;
    if (!(f >> id >> parent >> devno) || devno != want) continue;
    const size_t sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream tail(line.substr(sep + 3));
    std::string type;
    if (tail >> type) return type;
  }
  return "";
}

}  // namespace

FilesystemInfo filesystem_of(int fd) {
  FilesystemInfo info;
  struct statfs sf;
  if (::fstatfs(fd, &sf) != 0) {
    info.name = "unknown (fstatfs failed)";
    return info;
  }
  info.magic = static_cast<uint64_t>(static_cast<uint32_t>(sf.f_type));
  for (const KnownFs& k : kKnown) {
    if (k.magic != info.magic) continue;
    info.name = k.name;
    info.kind = k.kind;
  }
  if (info.name.empty()) {
    char hex[32];
    std::snprintf(hex, sizeof(hex), "unknown (0x%llx)", static_cast<unsigned long long>(info.magic));
    info.name = hex;
  }
  if (info.kind == FilesystemClass::kFuse) {
    // Every FUSE filesystem shares one magic; the mount table names it.
    struct stat st;
    if (::fstat(fd, &st) == 0) {
      static std::mutex mu;
      static std::map<dev_t, std::string> cache;
      std::lock_guard<std::mutex> lock(mu);
      auto it = cache.find(st.st_dev);
      if (it == cache.end()) it = cache.emplace(st.st_dev, mount_type(st.st_dev)).first;
      if (!it->second.empty()) info.name = it->second;
    }
  }
  return info;
}

double reopen_wait_seconds(const FilesystemInfo& fs) {
  constexpr double kMaxWait = 600;
  double wait = 2.0;
  if (const char* v = std::getenv("FFRECORD_REOPEN_WAIT"); v && *v) {
    char* end = nullptr;
    errno = 0;
    wait = std::strtod(v, &end);
    if (*end || errno || !std::isfinite(wait) || wait < 0 || wait > kMaxWait)
      throw_value(std::string("FFRECORD_REOPEN_WAIT must be a number of seconds in [0, 600], got '") + v + "'");
  }
  return fs.shared() ? wait : 0.0;
}

bool mapping_refused(int err) {
  switch (err) {
    case ENODEV:
    case EINVAL:
    case EACCES:
    case EPERM:
    case ENOTSUP:
    case ENOSYS:
      return true;
    default:
      return false;
  }
}

}  // namespace ffrecord
