// CurveZMQ key files for loraflip-relay: written by `loraflipctl keygen`, read by the relay.
//
//   PREFIX.key  the secret key, 40 characters of Z85 and a newline; mode 0600. Refused when
//               it is not a regular file or when anyone but its owner may read or write it
//               (the key is the node's identity: whoever reads it can pose as the node).
//   PREFIX.pub  the public key, the same form; mode 0644. Given to the peers: an upstream lists
//               its followers' in its allow file, a follower names its upstream's.
//   allow file  one public key (Z85) per line; blank lines and lines starting with '#' are
//               skipped. Anything else is an error, so that a typo never silently shuts a
//               follower out (or in).
// Library code: failures come back as values; the programs say them.
#pragma once

#include <set>
#include <string>

#include "ipc/result.hpp"

namespace loraflip::relay {

// A key as libzmq's socket options take it: 40 characters of Z85 (32 bytes).
inline constexpr size_t kZ85KeyChars = 40;

struct KeyPair {
  std::string public_z85;
  std::string secret_z85;
};

// A fresh key pair (zmq_curve_keypair). LF_E_UNSUPPORTED when libzmq was built without CURVE.
Result<KeyPair> generate_keypair();

// Writes PREFIX.key (0600) and PREFIX.pub (0644). Refuses to overwrite either file (O_EXCL):
// replacing a node's key is a decision, not a side effect. Returns the public key file's path.
Result<std::string> write_keypair(const std::string &prefix, const KeyPair &keys);

// Reads a secret key file, refusing one that others than its owner can read or write, and
// derives its public key (zmq_curve_public).
Result<KeyPair> load_secret_key(const std::string &path);

// Reads a public key file (one key).
Result<std::string> load_public_key(const std::string &path);

// Reads an allow file: the set of public keys (Z85) it lists.
Result<std::set<std::string>> load_allow_file(const std::string &path);

// Whether `text` is a well-formed Z85 key (40 characters of the Z85 alphabet that decode).
bool is_z85_key(const std::string &text);

}  // namespace loraflip::relay
