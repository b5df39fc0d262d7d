# Shared set-up for scripts/serve and scripts/test. Sourced, not run.
#
# Both commands build with the same profile (release) and the same unit graph (`cargo test
# --no-run` builds what `cargo test` runs), so RocksDB's C++ is compiled once per machine.

set -euo pipefail

# The target directory lives outside the clone so every clone on a machine (a developer's
# checkout, CI's fresh clone) reuses the same compiled RocksDB.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/custodian/target}"
CUSTODIAN_CACHE="${CUSTODIAN_CACHE:-$HOME/.cache/custodian}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# System packages: libclang for bindgen (RocksDB's bindings), a C++ compiler, and ccache so
# that a change in Cargo's fingerprint of librocksdb-sys costs a cache lookup, not a rebuild.
# Installs the Debian packages named after the purpose that are not installed yet.
ensure_debian_packages() {
  local why="$1"; shift
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing $why: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_system_packages() {
  ensure_debian_packages "system packages" libclang-dev g++ ccache
  export CC="ccache cc" CXX="ccache c++"
  export CCACHE_DIR="${CCACHE_DIR:-$CUSTODIAN_CACHE/ccache}"
  export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
}

# curl is the independent HTTP client of the REST tests; openssl makes their TLS certificates
# and gives the benchmarks their SHA-256 baseline.
ensure_http_tools() {
  ensure_debian_packages "curl and openssl for the REST and TLS tests" curl openssl
}

# The OCI front end's independent clients and its reference peer: Debian's skopeo (copies images
# in and out), and CNCF distribution as Debian packages it (docker-registry), which the OCI
# benchmark measures against. The daemon is never started by the package: the tests and the
# benchmark start their own on loopback.
ensure_oci_tools() {
  if ! dpkg -s docker-registry >/dev/null 2>&1; then
    # Debian's package starts a registry on :5000 at install; policy-rc.d keeps it from doing so.
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    ensure_debian_packages "the OCI clients and reference registry" skopeo docker-registry
    as_root rm -f /usr/sbin/policy-rc.d
  fi
  ensure_debian_packages "the OCI clients and reference registry" skopeo docker-registry
}

# PostgreSQL, for the ledger backend's tests: Debian's server binaries only. The tests run
# initdb and pg_ctl themselves in a temporary directory on a loopback port (as the `postgres`
# user when run as root, since PostgreSQL refuses root), so the packaged cluster is never
# started: policy-rc.d keeps the install from starting it.
ensure_postgres() {
  if ! dpkg -s postgresql >/dev/null 2>&1; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    ensure_debian_packages "PostgreSQL for the ledger backend's tests" postgresql
    as_root rm -f /usr/sbin/policy-rc.d
  fi
  local bin
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    echo "error: PostgreSQL's initdb was not found under /usr/lib/postgresql/*/bin" >&2
    exit 1
  fi
  export CUSTODIAN_PG_BIN="$bin"
}

# The S3-compatible test server (moto), in a virtual environment of its own.
ensure_moto() {
  local venv="$CUSTODIAN_CACHE/venv"
  if [ ! -x "$venv/bin/moto_server" ]; then
    # Debian's own python3 ships venv support separately.
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      say "installing python3 and python3-venv"
      as_root apt-get update -qq
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    fi
    say "installing the S3 test server (moto) into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
  fi
  # The walkthrough's and the interop tests' Python clients: gRPC reflection (grpcurl is not
  # packaged for Debian) and the independent bundle verifier's CBOR and Ed25519.
  if ! "$venv/bin/python" -c 'import grpc_reflection, cbor2, cryptography, yaml, license_expression' 2>/dev/null; then
    say "installing the Python test clients (grpcio-reflection, cbor2, cryptography, PyYAML, license-expression) into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      'grpcio>=1.60' 'grpcio-reflection>=1.60' 'cbor2>=5.4' 'cryptography>=41' 'PyYAML>=6' \
      'license-expression>=30'
  fi
  # securesystemslib: DSSE verification nobody here wrote, for the badge's SLSA VSA.
  if ! "$venv/bin/python" -c 'import securesystemslib.dsse' 2>/dev/null; then
    say "installing the DSSE verifier (securesystemslib) into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'securesystemslib>=1.0,<2'
  fi
  # oras-py: an OCI client nobody here wrote, for artifacts, subjects and referrers.
  if ! "$venv/bin/python" -c 'import oras.client' 2>/dev/null; then
    say "installing the OCI artifact client (oras) into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'oras>=0.2.30,<0.3'
  fi
  # OpenSSF model-signing: the ML world's signer and verifier, for OMS v1.0 both ways.
  if ! "$venv/bin/python" -c 'import model_signing, OpenSSL' 2>/dev/null; then
    say "installing the OpenSSF model-signing tool (model-signing 1.1.1) into $venv"
    # 1.1.1 imports pyOpenSSL without declaring it.
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'model-signing==1.1.1' pyopenssl
  fi
  # tuspy: a tus 1.0 client nobody here wrote, for the resumable hosted upload.
  if ! "$venv/bin/python" -c 'import tusclient' 2>/dev/null; then
    say "installing the tus client (tuspy) into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'tuspy==1.1.0'
  fi
  export CUSTODIAN_MODEL_SIGNING="$venv/bin/model_signing"
  export CUSTODIAN_MOTO_SERVER="$venv/bin/moto_server"
  export CUSTODIAN_PYTHON="$venv/bin/python"
}

# The Go peers of the interoperability tests, from the Go module proxy (tests/interop/go/go.mod
# pins them; go.sum checks them): golang.org/x/mod's sumdb/note and sumdb/tlog (the reference
# Tessera, the Go checksum database and witnesses build on), Tessera v1.0.4 (its client, policy
# evaluation and POSIX log), the C2SP formats' cosignature verifier, and litewitness from
# filippo.io/torchwood v0.6.1. They need a Go newer than Debian's, which this machine has in
# /usr/local/go. Go's own caches make later builds a few seconds.
ensure_go_interop() {
  local go=""
  for candidate in /usr/local/go/bin/go "$(command -v go || true)"; do
    if [ -x "$candidate" ] && "$candidate" version | grep -qE 'go1\.(2[4-9]|[3-9][0-9])'; then
      go="$candidate"; break
    fi
  done
  if [ -z "$go" ]; then
    echo "error: the interoperability tests need Go 1.24 or newer (found: $(go version 2>/dev/null || echo none))" >&2
    exit 1
  fi
  local bin="$CUSTODIAN_CACHE/go-bin"
  mkdir -p "$bin"
  say "building the Go interoperability peers (x/mod, Tessera, litewitness, the OCI conformance suite) from the module proxy"
  (cd tests/interop/go && "$go" build -o "$bin/" ./cmd/... filippo.io/torchwood/cmd/litewitness github.com/opencontainers/distribution-spec/conformance)
  export CUSTODIAN_GO_BIN="$bin"
}

# The page tests' browser: Debian's Chromium, driven by playwright-core (the driver alone, from
# the npm registry; it downloads no browser of its own) from a small Node script.
ensure_browser() {
  ensure_debian_packages "Chromium for the page tests" chromium
  local node="$CUSTODIAN_CACHE/node"
  if [ ! -f "$node/node_modules/playwright-core/package.json" ]; then
    say "installing the browser driver (playwright-core) into $node"
    mkdir -p "$node"
    (cd "$node" && npm install --silent --no-audit --no-fund --no-save playwright-core@1.65.1 >/dev/null)
  fi
  export CUSTODIAN_CHROMIUM=/usr/bin/chromium
  export CUSTODIAN_NODE_MODULES="$node/node_modules"
}

# The Azure Blob Storage emulator for the az:// backend's tests: Microsoft's Azurite, from the npm
# registry (its blob service alone is started, in memory, on a loopback port of each test's own).
ensure_azurite() {
  local dir="$CUSTODIAN_CACHE/azurite"
  if [ ! -x "$dir/node_modules/.bin/azurite-blob" ]; then
    say "installing the Azure Blob Storage emulator (azurite) into $dir"
    mkdir -p "$dir"
    (cd "$dir" && npm install --silent --no-audit --no-fund --no-save azurite@3.37.0 >/dev/null)
  fi
  export CUSTODIAN_AZURITE="$dir/node_modules/.bin/azurite-blob"
}

build_all() {
  say "building (release; the first build compiles RocksDB: 15 to 25 minutes on 2 cores)"
  cargo test --release --workspace --no-run --quiet
}
