//! Compiles the one C++ function the C API lacks (`cc/sorted_read.cc`: a batched read
//! without an allocation per key) against the RocksDB headers librocksdb-sys builds from.

fn main() {
    // librocksdb-sys publishes its source directory to crates that depend on it directly
    // (`links = "rocksdb"`, `cargo:cargo_manifest_dir`), so the headers are exactly the ones the
    // library was compiled from.
    let rocksdb = std::env::var("DEP_ROCKSDB_CARGO_MANIFEST_DIR")
        .expect("librocksdb-sys publishes its source directory (DEP_ROCKSDB_CARGO_MANIFEST_DIR)");
    let include = std::path::Path::new(&rocksdb).join("rocksdb/include");
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .include(&include)
        // The defines librocksdb-sys compiles RocksDB with on Linux, so that the headers lay
        // out the classes used here as the library does.
        .define("NDEBUG", Some("1"))
        .define("OS_LINUX", None)
        .define("ROCKSDB_PLATFORM_POSIX", None)
        .define("ROCKSDB_LIB_IO_POSIX", None)
        .define("HAVE_ALIGNED_NEW", None)
        .define("HAVE_UINT128_EXTENSION", None)
        .flag_if_supported("-Wno-unused-parameter")
        .file("cc/sorted_read.cc")
        .compile("custodian_rocksdb_sorted_read");
    println!("cargo:rerun-if-changed=cc/sorted_read.cc");
    println!("cargo:rerun-if-env-changed=DEP_ROCKSDB_CARGO_MANIFEST_DIR");
}
