#!/usr/bin/env bash
# The README's walkthrough, as a script that runs: a registry from nothing, blobs in custody, the
# two seed packages published exactly as the seeds write them, eval runs attested, scans, green
# badges, and everything an auditor checks offline. scripts/test runs it from a temporary folder
# outside the repository, so the README cannot drift from the product.
#
# Usage: examples/walkthrough.sh [WORK_DIR]     (default: a new temporary folder)
# The `custodian` binary is taken from $CUSTODIAN, else from PATH. The daemon listens on free
# loopback ports and is stopped when the script ends. Exits non-zero at the first step that
# does not do what the README says.
set -euo pipefail

examples=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
custodian=${CUSTODIAN:-$(command -v custodian || true)}
if [ -z "$custodian" ] || [ ! -x "$custodian" ]; then
  echo "walkthrough: no custodian binary: set CUSTODIAN=/path/to/custodian or put it on PATH" >&2
  exit 2
fi
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/custodian-walkthrough.XXXXXX")}
mkdir -p "$work"
cd "$work"

# Each step is shown as the README shows it, then run.
step() { printf '\n$ %s\n' "$*"; }
custodian() { "$custodian" "$@"; }
fail() { echo "walkthrough: $*" >&2; exit 1; }

daemon=
witness=
stop_daemon() { [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null; daemon=; true; }
stop() { stop_daemon; [ -n "$witness" ] && kill "$witness" 2>/dev/null && wait "$witness" 2>/dev/null; true; }
trap stop EXIT

# Waits until process $1 writes a line matching $3 to $2; shows its log $4 if it dies first.
wait_for_line() {
  for _ in $(seq 1 200); do
    grep -q "$3" "$2" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || { cat "$4" >&2; fail "$2: the process did not start"; }
    sleep 0.05
  done
  fail "$2: no line matching '$3' after 10 s"
}

# Starts the daemon on free loopback ports with extra flags and points the clients at it.
start_daemon() {
  "$custodian" serve --init --data-dir registry --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 \
    --log warn "$@" >serve.out 2>serve.log &
  daemon=$!
  wait_for_line "$daemon" serve.out 'rest listening' serve.log
  cat serve.out
  export CUSTODIAN_SERVER="http://$(sed -n 's/^custodian listening on //p' serve.out)"
  rest="http://$(sed -n 's/^custodian rest listening on //p' serve.out)"
  export CUSTODIAN_REST="$rest"
}

step "custodian serve --init --data-dir registry &"
start_daemon

step "export CUSTODIAN_TOKEN=\$(custodian token create --data-dir registry --name me --scope admin --namespace '*' --secret-only)"
CUSTODIAN_TOKEN=$(custodian token create --data-dir registry --name me --scope admin --namespace '*' --secret-only)
export CUSTODIAN_TOKEN

# Custody: any file, by digest.
cp "$examples/walkthrough/tickets.csv" tickets.csv
step "custodian blob put tickets.csv"
custodian blob put tickets.csv | tee put.out
digest=$(awk '{print $1}' put.out)
step "custodian blob get $digest -o copy.csv"
custodian blob get "$digest" -o copy.csv
cmp tickets.csv copy.csv || fail "the copy differs"
step "custodian blob missing $digest sha256:$(printf '0%.0s' $(seq 64))"
if custodian blob missing "$digest" "sha256:$(printf '0%.0s' $(seq 64))"; then
  fail "blob missing should exit 1 when a digest is absent"
fi

# Publishers sign; the first version pins the key.
step "custodian key generate keys/acme-release"
custodian key generate keys/acme-release

# The two seed packages, their manifests exactly as the seeds write them.
for package in customer-support-classifier pacman-builder; do
  mkdir -p "$package"
  cp "$examples/seeds/$package/manifest.yaml" "$package/manifest.yaml"
  cmp "$package/manifest.yaml" "$examples/seeds/$package/manifest.yaml"
done
step "custodian pack build pacman-builder --dry-run"
custodian pack build pacman-builder --dry-run
step "custodian publish pacman-builder --key keys/acme-release.key --receipt pub.receipt.json"
custodian publish pacman-builder --key keys/acme-release.key --receipt pub.receipt.json
step "custodian publish customer-support-classifier --key keys/acme-release.key --private   # sealed in the log"
custodian publish customer-support-classifier --key keys/acme-release.key --private
step "custodian versions pacman-builder"
custodian versions pacman-builder
step "custodian install pacman-builder@0.2.1 -o installed"
custodian install pacman-builder@0.2.1 -o installed
step "custodian pack verify installed --key keys/acme-release.pub"
custodian pack verify installed --key keys/acme-release.pub

# Seed 001's external data pack, in the seed's own YAML, through the seed's REST API.
step "curl -X PUT --data-binary @data-pack.yaml $rest/wrappers/pacman-builder/versions/0.2.1/data-pack/manifest"
curl -sS --fail-with-body -X PUT -H "Authorization: Bearer $CUSTODIAN_TOKEN" \
  -H 'Content-Type: application/yaml' --data-binary @"$examples/seeds/data-pack.yaml" \
  "$rest/wrappers/pacman-builder/versions/0.2.1/data-pack/manifest" >datapack.json
grep -q '"version": *"2026.03.1"' datapack.json || fail "the data pack view lacks the seed's version field"
step "custodian datapack show pacman-builder@0.2.1"
custodian datapack show pacman-builder@0.2.1

# Runners sign eval runs with their own key.
step "custodian key generate keys/runner && custodian attester register keys/runner.pub"
custodian key generate keys/runner
custodian attester register keys/runner.pub
# The bar before the score: the publisher pre-registers each eval's criteria, so the log shows
# they predate every run that counts (badge policy v4).
cp "$examples/walkthrough/harness.txt" harness.txt
prereg() {
  local spec=$1 metric=$2; shift 2
  for eval in "$@"; do
    step "custodian eval preregister $spec --eval $eval --metric $metric --threshold '>= 0.9' --sample-size 25 --harness harness.txt --key keys/acme-release.key"
    custodian eval preregister "$spec" --eval "$eval" --metric "$metric" --threshold '>= 0.9' \
      --sample-size 25 --harness harness.txt --key keys/acme-release.key
  done
}
prereg pacman-builder@0.2.1 pass_rate render_smoke ghost_ai_correctness score_logic level_completion
prereg customer-support-classifier@0.1.0 score label_accuracy format_following pii_leakage
step "custodian attest --schema   # the run file's JSON Schema"
custodian attest --schema >run.schema.json
for package in pacman-builder customer-support-classifier; do
  step "custodian attest $package.runs.json --key keys/runner.key"
  custodian attest "$examples/walkthrough/$package.runs.json" --key keys/runner.key
done

# The built-in scanner judged each publication; scans run offline too.
step "custodian scan local pacman-builder"
custodian scan local pacman-builder
step "custodian scan pacman-builder@0.2.1"
custodian scan pacman-builder@0.2.1

# Badges, and what an auditor checks with nothing but the log's key.
step "custodian log key > log.vkey     # publish it; auditors obtain it independently"
custodian log key >log.vkey
for spec in pacman-builder@0.2.1 customer-support-classifier@0.1.0; do
  bundle="${spec%@*}.bundle.json"
  step "custodian badge $spec -o $bundle"
  custodian badge "$spec" -o "$bundle" | tee badge.out
  grep -q ': GREEN' badge.out || fail "$spec is not green"
  step "custodian report $spec"
  custodian report "$spec" | tee report.out
  grep -q 'pre-registrations:' report.out || fail "the report shows no pre-registrations"
  step "custodian verify $bundle --key log.vkey     # offline"
  CUSTODIAN_SERVER=http://127.0.0.1:9 custodian verify "$bundle" --key log.vkey
done
# Any OCI client: a published package is an OCI artifact, and every push and tag move is a ledger
# entry with a receipt.
host=${rest#http://}
step "skopeo copy --preserve-digests --src-tls-verify=false docker://$host/pacman-builder:0.2.1 oci:pulled:0.2.1"
skopeo copy --preserve-digests --src-tls-verify=false "docker://$host/pacman-builder:0.2.1" oci:pulled:0.2.1 >/dev/null
step "skopeo copy --preserve-digests --dest-tls-verify=false --dest-creds me:\$CUSTODIAN_TOKEN oci:pulled:0.2.1 docker://$host/acme/mirror:stable"
skopeo copy --preserve-digests --dest-tls-verify=false --dest-creds "me:$CUSTODIAN_TOKEN" \
  oci:pulled:0.2.1 "docker://$host/acme/mirror:stable" >/dev/null
step "custodian oci history acme/mirror:stable --key log.vkey"
custodian oci history acme/mirror:stable --key log.vkey | tee history.out
grep -q '\[verified\]' history.out || fail "the tag's history did not verify"
step "custodian badge pacman-builder@0.2.1 --format vsa -o pacman-builder.vsa.json   # the badge as a SLSA VSA"
custodian badge pacman-builder@0.2.1 --format vsa -o pacman-builder.vsa.json >/dev/null
# Keys rotate in the ledger; what was signed before keeps verifying.
step "custodian key generate keys/acme-2027"
custodian key generate keys/acme-2027
step "custodian key rotate --role publisher --old keys/acme-release.key --new keys/acme-2027.key --for pacman-builder --for customer-support-classifier"
custodian key rotate --role publisher --old keys/acme-release.key --new keys/acme-2027.key \
  --for pacman-builder --for customer-support-classifier
# (Into a file first: `grep -q` would stop reading early, and pipefail would count the writer's
# broken pipe as a failure.)
custodian badge pacman-builder@0.2.1 -o rotated.bundle.json >rotated.out
grep -q ': GREEN' rotated.out || { cat rotated.out >&2; fail "pacman-builder is not green after the key rotation"; }
CUSTODIAN_SERVER=http://127.0.0.1:9 custodian verify rotated.bundle.json --key log.vkey >/dev/null
# The ML world's signature format, for their tools.
step "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ml.pem"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ml.pem 2>/dev/null
step "custodian pack build pacman-builder --format oms --key ml.pem"
custodian pack build pacman-builder --format oms --key ml.pem
step "custodian log verify-receipt pub.receipt.json --key log.vkey     # offline"
CUSTODIAN_SERVER=http://127.0.0.1:9 custodian log verify-receipt pub.receipt.json --key log.vkey
step "custodian log checkpoint > saved.checkpoint"
custodian log checkpoint >saved.checkpoint
step "custodian log consistency --from saved.checkpoint --key log.vkey --update"
custodian log consistency --from saved.checkpoint --key log.vkey --update
step "custodian log export audit && custodian audit audit --key log.vkey     # offline"
custodian log export audit
CUSTODIAN_SERVER=http://127.0.0.1:9 custodian audit audit --key log.vkey
# An independent witness, and the daemon publishing only the checkpoints it cosigned.
step "custodian witness keygen keys/witness --name witness.example"
custodian witness keygen keys/witness --name witness.example
echo "log $(cat log.vkey)" >witness.logs
step "custodian witness serve --key keys/witness.key --logs witness.logs --state witness-state &"
"$custodian" witness serve --key keys/witness.key --logs witness.logs --state witness-state \
  --listen 127.0.0.1:0 --log warn >witness.out 2>witness.log &
witness=$!
wait_for_line "$witness" witness.out 'witness listening' witness.log
cat witness.out
printf 'witness w %s http://%s\nquorum w\n' "$(cat keys/witness.pub)" \
  "$(sed -n 's/^custodian witness listening on //p' witness.out)" >witnesses.policy
step "custodian serve --data-dir registry --witness-policy witnesses.policy &   # restarted"
stop_daemon
start_daemon --witness-policy witnesses.policy
step "custodian log receipt 0 -o pub.receipt.json     # now with the witness's cosignature"
# The first cosigned checkpoint is published a moment after the start.
for _ in $(seq 1 100); do
  custodian log receipt 0 -o pub.receipt.json 2>/dev/null && break
  sleep 0.1
done
grep -q 'witness.example' pub.receipt.json || fail "the receipt carries no cosignature"
step "custodian log verify-receipt pub.receipt.json --key log.vkey --witness-policy witnesses.policy"
CUSTODIAN_SERVER=http://127.0.0.1:9 custodian log verify-receipt pub.receipt.json --key log.vkey \
  --witness-policy witnesses.policy
step "custodian badge pacman-builder@0.2.1 -o witnessed.bundle.json"
custodian badge pacman-builder@0.2.1 -o witnessed.bundle.json >/dev/null
step "custodian verify witnessed.bundle.json --key log.vkey --witness-policy witnesses.policy"
CUSTODIAN_SERVER=http://127.0.0.1:9 custodian verify witnessed.bundle.json --key log.vkey \
  --witness-policy witnesses.policy
step "custodian verify pacman-builder.bundle.json --key log.vkey --witness-policy witnesses.policy   # made before: refused"
if CUSTODIAN_SERVER=http://127.0.0.1:9 custodian verify pacman-builder.bundle.json --key log.vkey \
  --witness-policy witnesses.policy 2>refused.txt; then
  fail "a bundle without the witness's cosignature passed --witness-policy"
fi
cat refused.txt
grep -q 'lacks its witness quorum' refused.txt || fail "the refusal does not name the missing quorum"
step "custodian log monitor --log $rest/log --key log.vkey --state monitor.state --witness-policy witnesses.policy"
custodian log monitor --log "$rest/log" --key log.vkey --state monitor.state --witness-policy witnesses.policy

# grpcurl is not packaged for Debian; Python's grpcio-reflection is the reflection client here.
python=${CUSTODIAN_PYTHON:-python3}
step "python3 examples/walkthrough/reflection.py ${CUSTODIAN_SERVER#http://}   # gRPC reflection"
if "$python" -c 'import grpc_reflection' 2>/dev/null; then
  "$python" "$examples/walkthrough/reflection.py" "${CUSTODIAN_SERVER#http://}" | tee services.txt
  grep -q '^custodian.registry.v1.Registry$' services.txt || fail "reflection does not list the registry"
else
  echo "(skipped: pip install grpcio grpcio-reflection; scripts/test installs them)"
fi
printf '\nwalkthrough: every step did what the README says (work folder: %s)\n' "$work"
