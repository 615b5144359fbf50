#include "tools/relay/keys.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "loraflip.h"

namespace loraflip::relay {

namespace {

Error system_error(const std::string &what, int err) {
  return make_error(LF_E_SYSTEM, what + ": " + std::strerror(err));
}

// Reads a small file whole: key files are 41 bytes, allow files a few KiB. The bound keeps a
// wrong path (a device, a huge log) from being read into memory.
Result<std::string> read_small_file(const std::string &path, bool secret) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return system_error("cannot open '" + path + "'", errno);
  struct stat st {};
  std::string text;
  Status status;
  if (::fstat(fd, &st) != 0) {
    status = system_error("cannot stat '" + path + "'", errno);
  } else if (!S_ISREG(st.st_mode)) {
    status = make_error(LF_E_INVALID_ARGUMENT, "'" + path + "' is not a regular file");
  } else if (secret && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    // Checked on the open descriptor (fstat), so a file swapped after the check is not read.
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    status = make_error(LF_E_PERMISSION, "secret key file '" + path + "' has mode " + mode +
                                             ": others than its owner may read it; refused "
                                             "(chmod 600 it, or make a new key)");
  } else if (secret && st.st_uid != ::geteuid()) {
    status = make_error(LF_E_PERMISSION, "secret key file '" + path +
                                             "' belongs to another user; refused");
  } else if (st.st_size > (1 << 20)) {
    status = make_error(LF_E_TOO_LARGE, "'" + path + "' is over 1 MiB");
  } else {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        status = system_error("cannot read '" + path + "'", errno);
        break;
      }
      if (n == 0) break;
      text.append(buf, static_cast<size_t>(n));
      if (text.size() > (1u << 20)) {
        status = make_error(LF_E_TOO_LARGE, "'" + path + "' is over 1 MiB");
        break;
      }
    }
  }
  ::close(fd);
  if (!status) return status.error();
  return text;
}

std::string trimmed(const std::string &line) {
  const size_t a = line.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return {};
  const size_t b = line.find_last_not_of(" \t\r\n");
  return line.substr(a, b - a + 1);
}

// The one key of a key file.
Result<std::string> key_of(const std::string &text, const std::string &path) {
  const std::string key = trimmed(text);
  if (!is_z85_key(key))
    return make_error(LF_E_INVALID_ARGUMENT,
                      "'" + path + "' holds no key (40 characters of Z85 expected)");
  return key;
}

Status write_file(const std::string &path, const std::string &text, mode_t mode) {
  // O_EXCL: never replace a key, and never write through a link someone planted.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return system_error("cannot create '" + path + "'", errno);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(path.c_str());
      return system_error("cannot write '" + path + "'", err);
    }
    done += static_cast<size_t>(n);
  }
  // The umask may only narrow the mode; set it exactly (0600 stays 0600 whatever the umask).
  if (::fchmod(fd, mode) != 0 || ::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return system_error("cannot finish '" + path + "'", err);
  }
  ::close(fd);
  return {};
}

}  // namespace

bool is_z85_key(const std::string &text) {
  if (text.size() != kZ85KeyChars) return false;
  uint8_t decoded[32];
  return zmq_z85_decode(decoded, text.c_str()) != nullptr;
}

Result<KeyPair> generate_keypair() {
  if (!zmq_has("curve"))
    return make_error(LF_E_UNSUPPORTED, "this libzmq was built without CURVE");
  char pub[kZ85KeyChars + 1], sec[kZ85KeyChars + 1];
  if (zmq_curve_keypair(pub, sec) != 0)
    return make_error(LF_E_SYSTEM, std::string("zmq_curve_keypair: ") + zmq_strerror(zmq_errno()));
  KeyPair keys{pub, sec};
  // Not left in stack memory longer than needed.
  std::memset(sec, 0, sizeof sec);
  return keys;
}

Result<std::string> write_keypair(const std::string &prefix, const KeyPair &keys) {
  if (prefix.empty()) return make_error(LF_E_INVALID_ARGUMENT, "the key prefix is empty");
  const std::string secret_path = prefix + ".key", public_path = prefix + ".pub";
  // Both names are checked first, so that a refusal leaves neither file half made.
  struct stat st {};
  for (const std::string &p : {secret_path, public_path})
    if (::lstat(p.c_str(), &st) == 0)
      return make_error(LF_E_EXISTS, "'" + p + "' exists already; refusing to replace a key");
  if (Status s = write_file(secret_path, keys.secret_z85 + "\n", 0600); !s) return s.error();
  if (Status s = write_file(public_path, keys.public_z85 + "\n", 0644); !s) {
    ::unlink(secret_path.c_str());
    return s.error();
  }
  return public_path;
}

Result<KeyPair> load_secret_key(const std::string &path) {
  Result<std::string> text = read_small_file(path, true);
  if (!text) return text.error();
  Result<std::string> secret = key_of(text.value(), path);
  if (!secret) return secret.error();
  char pub[kZ85KeyChars + 1];
  if (zmq_curve_public(pub, secret->c_str()) != 0)
    return make_error(LF_E_INVALID_ARGUMENT, "'" + path + "' holds no usable secret key");
  return KeyPair{pub, secret.value()};
}

Result<std::string> load_public_key(const std::string &path) {
  Result<std::string> text = read_small_file(path, false);
  if (!text) return text.error();
  return key_of(text.value(), path);
}

Result<std::set<std::string>> load_allow_file(const std::string &path) {
  Result<std::string> text = read_small_file(path, false);
  if (!text) return text.error();
  std::set<std::string> keys;
  size_t line_no = 0, start = 0;
  const std::string &t = text.value();
  while (start <= t.size()) {
    size_t end = t.find('\n', start);
    if (end == std::string::npos) end = t.size();
    ++line_no;
    const std::string line = trimmed(t.substr(start, end - start));
    start = end + 1;
    if (line.empty() || line[0] == '#') continue;
    if (!is_z85_key(line))
      return make_error(LF_E_INVALID_ARGUMENT, "'" + path + "' line " + std::to_string(line_no) +
                                                   ": not a public key (40 characters of Z85)");
    keys.insert(line);
  }
  return keys;
}

}  // namespace loraflip::relay
