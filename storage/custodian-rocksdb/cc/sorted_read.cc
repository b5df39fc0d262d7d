// Batched reads of many keys without an allocation per key (src/sorted_read.rs says why).
//
// RocksDB's C API answers a batched read with one heap-allocated value handle per key found,
// and copies a value found in a memtable into a fresh string. Here the value slots are reused
// from one batch of keys to the next, so a copied value reuses its string's capacity, and each
// value is lent to the caller's callback where it lies.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "rocksdb/db.h"

// The C API's handles, as rocksdb/db/c.cc defines them (librocksdb-sys 0.19, RocksDB 11.8): the
// C++ object's pointer first. The Rust side passes the handles the `rocksdb` crate holds.
struct rocksdb_t {
  rocksdb::DB* rep;
};
struct rocksdb_column_family_handle_t {
  rocksdb::ColumnFamilyHandle* rep;
  bool immortal;
};

namespace {

// Keys per call into RocksDB. It splits a batch into groups of 32 itself, so a larger batch
// gains nothing, and 128 value slots stay within a few pages.
constexpr size_t kBatch = 128;

char* copy_message(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, text.data(), text.size());
    out[text.size()] = '\0';
  }
  return out;
}

}  // namespace

// Reads `count` keys of `key_len` bytes each, in ascending byte order, from `cf`, and calls
// `visit(context, i, value, value_len)` for each key `i` found, in order; the value is valid
// only during the call. Returns 0; 1 when `visit` returned nonzero (the read stops there); or
// -1 with `*error` set to a message from malloc(3) when a read fails.
extern "C" int custodian_rocksdb_read_sorted(
    rocksdb_t* db, rocksdb_column_family_handle_t* cf, const uint8_t* keys, size_t key_len,
    size_t count, int (*visit)(void*, size_t, const uint8_t*, size_t), void* context,
    char** error) {
  *error = nullptr;
  try {
    rocksdb::ReadOptions options;
    const size_t slots = std::min(count, kBatch);
    std::vector<rocksdb::Slice> slices(slots);
    std::vector<rocksdb::PinnableSlice> values(slots);
    std::vector<rocksdb::Status> statuses(slots);
    for (size_t start = 0; start < count; start += kBatch) {
      const size_t n = std::min(kBatch, count - start);
      for (size_t i = 0; i < n; ++i) {
        slices[i] = rocksdb::Slice(
            reinterpret_cast<const char*>(keys + (start + i) * key_len), key_len);
      }
      db->rep->MultiGet(options, cf->rep, n, slices.data(), values.data(), statuses.data(),
                        /*sorted_input=*/true);
      for (size_t i = 0; i < n; ++i) {
        if (statuses[i].ok()) {
          const int stop = visit(context, start + i,
                                 reinterpret_cast<const uint8_t*>(values[i].data()),
                                 values[i].size());
          if (stop != 0) {
            return 1;
          }
        } else if (!statuses[i].IsNotFound()) {
          *error = copy_message(statuses[i].ToString());
          return -1;
        }
        // Unpins the block a value pointed into; a copied value keeps its string's capacity.
        values[i].Reset();
      }
    }
    return 0;
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
  } catch (...) {
    *error = copy_message("unknown C++ exception");
  }
  return -1;
}
