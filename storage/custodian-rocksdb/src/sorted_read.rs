//! Batched reads of many keys without an allocation per key: the one place this crate calls
//! RocksDB's C++ API itself (`cc/sorted_read.cc`), and the only unsafe code in the workspace.
//!
//! The `rocksdb` crate's batched read goes through RocksDB's C API, which answers with one
//! heap-allocated handle per key found and copies each value found in a memtable into a fresh
//! string: two allocations and two frees per key, made and freed on the reading thread. A
//! `FindMissing` of 10,000 digests is looked up on both cores at once, and the daemon runs with
//! two glibc arenas (`custodian-cli`'s `allocator` module says why), so the two lookups queued
//! for the same arena locks: 6.9–8.1 ms for the lookup of a call on a fresh store, against
//! 2.9–4.8 ms with eight arenas, which took the daemon's peak past its memory budget
//! (docs/performance-history.md, "Presence without an allocation per key"). The C++ side reuses its
//! value slots from one batch to the next and lends each value to a Rust callback where it lies.

use std::ffi::{c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use custodian_storage::{Result, StorageError};
use rocksdb::{AsColumnFamilyRef as _, AsRawPtr as _, ColumnFamily, DB, Options};

/// What the C++ side calls with each key found: the context, the key's place in the sorted
/// keys, and its value (lent for the call only). Nonzero stops the read.
type Visit = unsafe extern "C" fn(*mut c_void, usize, *const u8, usize) -> c_int;

unsafe extern "C" {
    /// `cc/sorted_read.cc`: reads `count` keys of `key_len` bytes, in ascending order, from `cf`;
    /// returns 0, 1 if `visit` stopped the read, or -1 with `*error` set (freed with free(3)).
    fn custodian_rocksdb_read_sorted(
        db: *mut librocksdb_sys::rocksdb_t,
        cf: *mut librocksdb_sys::rocksdb_column_family_handle_t,
        keys: *const u8,
        key_len: usize,
        count: usize,
        visit: Visit,
        context: *mut c_void,
        error: *mut *mut c_char,
    ) -> c_int;

    fn free(pointer: *mut c_void);
}

/// The state the callback reaches through its context pointer.
struct Context<'a> {
    /// The caller's callback, with each found key's place in `places`.
    visit: &'a mut dyn FnMut(usize, &[u8]) -> Result<()>,
    /// The error the callback returned, which stopped the read.
    failed: Option<StorageError>,
    /// A panic of the callback, resumed once the C++ frames are left (unwinding through them
    /// would abort the process).
    panicked: Option<Box<dyn std::any::Any + Send>>,
}

unsafe extern "C" fn visit_value(
    context: *mut c_void,
    place: usize,
    value: *const u8,
    len: usize,
) -> c_int {
    // SAFETY: `context` is the `Context` `read_sorted` passed, alive and not otherwise
    // borrowed for the whole C++ call; `value` points at `len` bytes RocksDB keeps pinned or
    // copied until this callback returns (or is null with `len` 0).
    let context = unsafe { &mut *context.cast::<Context<'_>>() };
    let value = if len == 0 {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(value, len) }
    };
    match catch_unwind(AssertUnwindSafe(|| (context.visit)(place, value))) {
        Ok(Ok(())) => 0,
        Ok(Err(error)) => {
            context.failed = Some(error);
            1
        }
        Err(panic) => {
            context.panicked = Some(panic);
            1
        }
    }
}

/// Reads `keys` (ascending, as RocksDB's sorted batched read requires) from `cf` of `db`, and
/// calls `visit` with the place in `keys` and the value of each key found, in order. A key not
/// found is not visited. The first error `visit` returns stops the read and is returned; a
/// failed read is a backend error of `backend`.
pub fn read_sorted(
    db: &DB,
    cf: &ColumnFamily,
    keys: &[[u8; 32]],
    backend: &'static str,
    mut visit: impl FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    debug_assert!(
        keys.is_sorted(),
        "read_sorted needs its keys in ascending order"
    );
    let mut context = Context {
        visit: &mut visit,
        failed: None,
        panicked: None,
    };
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: the handles are the live ones `db` and `cf` own, borrowed for the whole call;
    // `keys` is `keys.len()` keys of 32 bytes; `context` outlives the call, and the callback
    // casts it back to the same type.
    let code = unsafe {
        custodian_rocksdb_read_sorted(
            db.as_raw_ptr(),
            cf.inner(),
            keys.as_ptr().cast(),
            32,
            keys.len(),
            visit_value,
            (&raw mut context).cast(),
            &raw mut error,
        )
    };
    if let Some(panic) = context.panicked {
        resume_unwind(panic);
    }
    match code {
        0 => Ok(()),
        1 => Err(context
            .failed
            .unwrap_or_else(|| StorageError::backend(backend, "a batched read was stopped"))),
        _ => {
            let message = if error.is_null() {
                "a batched read failed".to_owned()
            } else {
                // SAFETY: the C++ side set `error` to a NUL-terminated string from malloc(3),
                // read here once and freed once.
                let text = unsafe { std::ffi::CStr::from_ptr(error) }
                    .to_string_lossy()
                    .into_owned();
                unsafe { free(error.cast()) };
                text
            };
            Err(StorageError::backend(backend, message))
        }
    }
}

/// Sets RocksDB's `memtable_batch_lookup_optimization` on a column family's options, which the
/// `rocksdb` crate has no setter for: a sorted batched read then walks a memtable's skip list
/// from the key before, instead of from its head for every key (RocksDB 11's
/// `AdvancedColumnFamilyOptions`, "reducing per-key cost from O(log N) to O(log d) where d is
/// the distance between consecutive keys"). It takes effect when the column family is opened.
pub fn batch_memtable_lookups(options: &mut Options) {
    // SAFETY: `options` is a live `rocksdb_options_t` the `rocksdb` crate owns; the setter
    // writes one field of it.
    unsafe {
        librocksdb_sys::rocksdb_options_set_memtable_batch_lookup_optimization(
            options.as_raw_ptr(),
            1,
        );
    }
}
