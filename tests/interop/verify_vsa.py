"""Checks a Custodian badge VSA independently of Custodian's code.

usage: verify_vsa.py BUNDLE_FILE LOG_VKEY [VSA_FILE]

Without VSA_FILE the VSA the bundle carries is checked; with it, the one `custodian badge
--format vsa` wrote (from a later evaluation, so its time may be later than the bundle's).

The DSSE signature is verified with PyPI `securesystemslib` (its Envelope and SSlibKey, Ed25519),
using the Ed25519 public key inside the log's C2SP signed-note verifier key
(`name+hexid+base64(0x01 || key)`). The statement is then checked, field by field, against the
in-toto Statement v1 layout (https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md)
and the SLSA Verification Summary v1 predicate (https://slsa.dev/spec/v1.0/verification_summary),
and against what the badge bundle itself says. Prints "vsa ok" or exits 1 naming the field.
"""

import base64
import datetime
import hashlib
import json
import os
import sys

from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey


def fail(field, why):
    sys.exit(f"vsa: {field}: {why}")


def require(obj, field, kind, path):
    if field not in obj:
        fail(f"{path}.{field}", "missing")
    if not isinstance(obj[field], kind):
        fail(f"{path}.{field}", f"not a {kind.__name__}")
    return obj[field]


def digest_set(obj, path):
    if not isinstance(obj, dict) or not obj:
        fail(path, "a DigestSet is a non-empty object")
    for algorithm, value in obj.items():
        if algorithm == "sha256" and (len(value) != 64 or value != value.lower()):
            fail(f"{path}.sha256", "not 64 lowercase hex digits")


def main():
    bundle_file, vkey = sys.argv[1:3]
    vsa_file = sys.argv[3] if len(sys.argv) > 3 else None
    if os.path.exists(vkey):
        vkey = open(vkey).read().strip()
    # name+hexid+base64: the name has no "+", the base64 may.
    name, keyhash, key64 = vkey.split("+", 2)
    raw = base64.b64decode(key64)
    if raw[0] != 0x01 or len(raw) != 33:
        fail("log key", "not an Ed25519 signed-note key")
    bundle = json.load(open(bundle_file))
    if vsa_file is None:
        envelope = Envelope.from_dict(json.loads(bundle["vsa"]))
    else:
        envelope = Envelope.from_dict(json.load(open(vsa_file)))
    key = SSlibKey(
        keyid=f"{name}+{keyhash}",
        keytype="ed25519",
        scheme="ed25519",
        keyval={"public": raw[1:].hex()},
    )
    envelope.verify([key], 1)  # raises VerificationError unless the log's key signed it
    if envelope.payload_type != "application/vnd.in-toto+json":
        fail("payloadType", envelope.payload_type)
    statement = json.loads(envelope.payload)

    # in-toto Statement v1
    if require(statement, "_type", str, "statement") != "https://in-toto.io/Statement/v1":
        fail("_type", statement["_type"])
    subjects = require(statement, "subject", list, "statement")
    if len(subjects) != 1:
        fail("subject", "one subject expected")
    require(subjects[0], "name", str, "subject[0]")
    digest_set(require(subjects[0], "digest", dict, "subject[0]"), "subject[0].digest")
    if require(statement, "predicateType", str, "statement") != "https://slsa.dev/verification_summary/v1":
        fail("predicateType", statement["predicateType"])
    predicate = require(statement, "predicate", dict, "statement")

    # SLSA VSA v1: required fields and their types
    require(require(predicate, "verifier", dict, "predicate"), "id", str, "predicate.verifier")
    time_verified = require(predicate, "timeVerified", str, "predicate")
    require(predicate, "resourceUri", str, "predicate")
    policy = require(predicate, "policy", dict, "predicate")
    require(policy, "uri", str, "predicate.policy")
    digest_set(require(policy, "digest", dict, "predicate.policy"), "predicate.policy.digest")
    inputs = require(predicate, "inputAttestations", list, "predicate")
    for i, item in enumerate(inputs):
        require(item, "uri", str, f"predicate.inputAttestations[{i}]")
        digest_set(require(item, "digest", dict, f"predicate.inputAttestations[{i}]"),
                   f"predicate.inputAttestations[{i}].digest")
    result = require(predicate, "verificationResult", str, "predicate")
    if result not in ("PASSED", "FAILED"):
        fail("predicate.verificationResult", result)
    levels = require(predicate, "verifiedLevels", list, "predicate")

    # ... and what the bundle says.
    badge = bundle["badge"]
    manifest = base64.b64decode(bundle["manifest"])
    if subjects[0]["digest"]["sha256"] != hashlib.sha256(manifest).hexdigest():
        fail("subject[0].digest", "not the bundled manifest.yaml")
    if subjects[0]["name"] != f"{badge['name']}@{badge['version']}":
        fail("subject[0].name", subjects[0]["name"])
    when = datetime.datetime.fromisoformat(time_verified.replace("Z", "+00:00"))
    at = round(when.timestamp() * 1000)
    if at != badge["evaluated_ms"] if vsa_file is None else at < badge["evaluated_ms"]:
        fail("predicate.timeVerified", f"{time_verified} is not the badge's evaluation time")
    if not policy["uri"].endswith("/" + badge["policy"]):
        fail("predicate.policy.uri", policy["uri"])
    if (result == "PASSED") != (badge["state"] == "green"):
        fail("predicate.verificationResult", f"{result} for a {badge['state']} badge")
    if levels != ["CUSTODIAN_BADGE_" + badge["state"].upper()]:
        fail("predicate.verifiedLevels", levels)
    entries = {e["index"]: base64.b64decode(e["entry"]) for e in bundle["entries"]}
    expected = [hashlib.sha256(entries[i]).hexdigest() for i in badge["evidence"]]
    if [item["digest"]["sha256"] for item in inputs] != expected:
        fail("predicate.inputAttestations", "not the digests of the badge's evidence entries")
    print(f"vsa ok: {subjects[0]['name']} {result}, {len(inputs)} input attestations")


if __name__ == "__main__":
    main()
