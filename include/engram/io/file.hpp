// Opening files given by a user: only regular files are ever opened (a FIFO, a device, a socket or
// a directory is an Error, never a hang), and every filesystem failure becomes an Error with the path.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <system_error>

#include "engram/core/config.hpp"
#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace io {

/// What a path names, after following symlinks; never throws (a symlink loop, a permission problem
/// or an over-long path is `error`, with its message).
struct PathKind {
  std::filesystem::file_type type = std::filesystem::file_type::none;
  std::string error;  ///< non-empty when the status could not be read (other than "not found")
  bool exists() const { return type != std::filesystem::file_type::not_found && type != std::filesystem::file_type::none; }
  bool regular() const { return type == std::filesystem::file_type::regular; }
  bool directory() const { return type == std::filesystem::file_type::directory; }
};

inline PathKind path_kind(const std::filesystem::path& path) {
  PathKind k;
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  k.type = st.type();
  if (ec && k.type != std::filesystem::file_type::not_found) k.error = ec.message();
  return k;
}

inline const char* type_name(std::filesystem::file_type t) {
  using ft = std::filesystem::file_type;
  switch (t) {
    case ft::regular: return "a regular file";
    case ft::directory: return "a directory";
    case ft::symlink: return "a symlink";
    case ft::block: return "a block device";
    case ft::character: return "a character device";
    case ft::fifo: return "a FIFO";
    case ft::socket: return "a socket";
    case ft::not_found: return "missing";
    default: return "of unknown type";
  }
}

/// Throws Error naming `path` unless it is an existing regular file (symlinks followed). `what`
/// says what the file was for (e.g. "weights file").
inline void require_regular_file(const std::filesystem::path& path, std::string_view what = "file") {
  const PathKind k = path_kind(path);
  check(k.error.empty(), path.string(), "cannot use this ", what, ": ", k.error);
  check(k.exists(), path.string(), what, " not found");
  check(k.regular(), path.string(), "the ", what, " is ", type_name(k.type), ", expected a regular file");
}

/// Throws Error naming `path` unless it is an existing directory.
inline void require_directory(const std::filesystem::path& path, std::string_view what = "directory") {
  const PathKind k = path_kind(path);
  check(k.error.empty(), path.string(), "cannot use this ", what, ": ", k.error);
  check(k.exists(), path.string(), what, " not found");
  check(k.directory(), path.string(), "the ", what, " is ", type_name(k.type), ", expected a directory");
}

/// A read-only file descriptor of a regular file, closed on destruction. The path is checked before
/// opening (so a FIFO is never opened), and the descriptor again after (O_NONBLOCK, then fstat), so a
/// file swapped for a FIFO in between cannot block either.
class ReadFile {
 public:
  ReadFile(const std::filesystem::path& path, std::string_view what = "file") : path_(path.string()) {
    require_regular_file(path, what);
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    check(fd_ >= 0, path_, "cannot open the ", what, ": ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      fail(path_, "the ", what, " is not a regular file");
    }
    size_ = std::size_t(st.st_size);
    const int flags = ::fcntl(fd_, F_GETFL);
    if (flags >= 0) (void)::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
  }
  ReadFile(const ReadFile&) = delete;
  ReadFile& operator=(const ReadFile&) = delete;
  ~ReadFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }
  /// Size at open time.
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  /// The whole file.
  std::string read_all() const {
    std::string out;
    out.resize(size_);
    std::size_t got = 0;
    while (got < out.size()) {
      const ssize_t n = ::pread(fd_, out.data() + got, out.size() - got, off_t(got));
      if (n < 0 && errno == EINTR) continue;
      check(n >= 0, path_, "read failed: ", std::strerror(errno));
      if (n == 0) break;  // the file shrank since fstat
      got += std::size_t(n);
    }
    out.resize(got);
    return out;
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::size_t size_ = 0;
};

}  // namespace io
ENGRAM_NAMESPACE_END
