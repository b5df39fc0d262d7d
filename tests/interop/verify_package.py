#!/usr/bin/env python3
"""An independent check of a Custodian package folder, written from docs/formats.md with
Python's standard library and pyca/cryptography only (no Custodian code):

  verify_package.py FOLDER VERIFIER_KEY

checks the signed-note verifier key's id, the DSSE v1 pre-authentication encoding and the
Ed25519 signature in FOLDER/.custodian/package.dsse.json, the in-toto Statement, the RFC 6962
package root over the `sha256:<hex> <size> <path>` lines, and every file on disk. Prints one
line and exits 0 when everything holds; raises (exit 1) naming what does not.
"""
import base64
import hashlib
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def mth(leaves):
    """RFC 6962 section 2.1 Merkle Tree Hash over leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def main(folder, vkey_text):
    name, key_hash, key_b64 = vkey_text.strip().split("+", 2)
    key = base64.b64decode(key_b64)
    if key[0] != 1 or len(key) != 33:
        fail("not an Ed25519 signed-note key")
    if hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() != key_hash:
        fail("the key id does not match the key")
    public = Ed25519PublicKey.from_public_bytes(key[1:])

    with open(os.path.join(folder, ".custodian", "package.dsse.json")) as f:
        envelope = json.load(f)
    payload = base64.b64decode(envelope["payload"])
    payload_type = envelope["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
    signatures = [s for s in envelope["signatures"] if s["keyid"] == f"{name}+{key_hash}"]
    if not signatures:
        fail("no signature by the key")
    public.verify(base64.b64decode(signatures[0]["sig"]), pae)

    statement = json.loads(payload)
    if statement["_type"] != "https://in-toto.io/Statement/v1":
        fail("not an in-toto Statement v1")
    if statement["predicateType"] != "https://custodian.dev/behavior-package/v1":
        fail("not a Behavior Package predicate")
    predicate = statement["predicate"]
    files = sorted(predicate["files"], key=lambda f: f["path"].encode())
    subjects = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    leaves = []
    for f in files:
        if subjects.get(f["path"]) != f["sha256"].removeprefix("sha256:"):
            fail(f"subject and file disagree for {f['path']}")
        line = f"{f['sha256']} {f['size']} {f['path']}\n".encode()
        leaves.append(hashlib.sha256(b"\x00" + line).digest())
        with open(os.path.join(folder, f["path"]), "rb") as data:
            content = data.read()
        if "sha256:" + hashlib.sha256(content).hexdigest() != f["sha256"] or len(content) != f["size"]:
            fail(f"{f['path']} on disk does not match its signed digest and size")
    root = "sha256:" + mth(leaves).hex()
    if root != predicate["root"]:
        fail(f"root {root} differs from the signed {predicate['root']}")
    print(f"ok {predicate['name']}@{predicate['version']} {len(files)} files root {root}")


if __name__ == "__main__":
    main(sys.argv[1], open(sys.argv[2]).read() if os.path.exists(sys.argv[2]) else sys.argv[2])
