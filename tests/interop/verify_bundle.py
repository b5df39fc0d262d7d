#!/usr/bin/env python3
"""A second, independent verifier of Custodian badge bundles, written from docs/verifying.md and
docs/formats.md alone with Python's hashlib, pyca/cryptography, cbor2, PyYAML and
license-expression (the SPDX license list); no Custodian code:

  verify_bundle.py BUNDLE LOG_VERIFIER_KEY

checks the signed checkpoint, every entry's RFC 9162 inclusion proof, the publication (manifest
digest, DSSE signature, in-toto Statement, RFC 6962 package root), every run (attester
registration, DSSE signature, the entry against its statement, the RFC 8785 context hash, the
run against its EvalSpec), every key event (a rotation signed by both keys) and pre-registration
(DSSE signature, the entry against its statement), judges every signature against the keys valid
at its entry's ledger time, then re-runs badge policy v3 or v4 and compares state, reasons (code,
state, eval, model, entry) and evidence with the bundle's badge. Prints one line and exits 0
when everything holds; exits 1 naming the first thing that does not.
"""
import base64
import hashlib
import json
import math
import sys

import cbor2
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from license_expression import get_spdx_licensing

# The RFC 6962 Merkle Tree Hash, shared with the package verifier beside this file.
from verify_package import mth

POLICY_V3 = "custodian.badge-policy.v3"
POLICY_V4 = "custodian.badge-policy.v4"
RUN_PREDICATE = "https://custodian.dev/eval-run/v1"
PREREG_PREDICATE = "https://custodian.dev/eval-preregistration/v1"
ROTATION_PAYLOAD = "application/vnd.custodian.key-rotation+json"
PACKAGE_PREDICATE = "https://custodian.dev/behavior-package/v1"
STATEMENT = "https://in-toto.io/Statement/v1"


class Invalid(Exception):
    pass


def fail(message):
    raise Invalid(message)


def sha256(data):
    return hashlib.sha256(data).digest()


# --- signed notes and keys (C2SP signed-note, formats.md) -------------------------------------

def parse_vkey(text):
    name, key_id, key_b64 = text.strip().split("+", 2)
    key = base64.b64decode(key_b64)
    if len(key) != 33 or key[0] != 1:
        fail("not an Ed25519 signed-note verifier key")
    if sha256(name.encode() + b"\n" + key)[:4].hex() != key_id:
        fail("the verifier key's id does not match the key")
    return name, key_id, Ed25519PublicKey.from_public_bytes(key[1:])


def open_checkpoint(note, vkey):
    name, key_id, public = vkey
    cut = note.index("\n\n") + 1
    text, signatures = note[:cut], note[cut + 1:]
    ok = False
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            continue
        signer, sig_b64 = line[2:].rsplit(" ", 1)
        sig = base64.b64decode(sig_b64)
        if signer == name and sig[:4].hex() == key_id:
            try:
                public.verify(sig[4:], text.encode())
                ok = True
            except InvalidSignature:
                fail("the checkpoint's signature does not verify")
    if not ok:
        fail("the checkpoint carries no signature by the log's key")
    origin, size, root = text.splitlines()[:3]
    if origin != name:
        fail("the checkpoint's origin is not the key's name")
    return int(size), base64.b64decode(root)


# --- RFC 9162 section 2.1.3.2 inclusion proof verification ----------------------------------

def verify_inclusion(index, size, leaf, proof, root):
    if index >= size:
        fail("index beyond the tree")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            fail("proof too long")
        if fn & 1 or fn == sn:
            r = sha256(b"\x01" + p + r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha256(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    if sn != 0 or r != root:
        fail(f"the inclusion proof of entry {index} does not lead to the checkpoint's root")


# --- DSSE ----------------------------------------------------------------------------------------

def dsse_verify(envelope_text, vkey, payload_type_wanted="application/vnd.in-toto+json"):
    name, key_id, public = vkey
    envelope = json.loads(envelope_text)
    if envelope["payloadType"] != payload_type_wanted:
        fail(f"the envelope's payloadType is {envelope['payloadType']!r}")
    payload = base64.b64decode(envelope["payload"])
    payload_type = envelope["payloadType"].encode()
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
    for s in envelope["signatures"]:
        if s["keyid"] == f"{name}+{key_id}":
            public.verify(base64.b64decode(s["sig"]), pae)
            return payload
    fail("no signature by the key")


# --- RFC 8785 canonical JSON (formats.md, "Canonical JSON") -------------------------------------

def es_number(v):
    """ECMAScript Number.prototype.toString, from the shortest round-trip digits repr() gives."""
    if v == 0:
        return "0"
    if not math.isfinite(v):
        fail("JSON numbers are finite")
    text = repr(abs(float(v)))
    mantissa, _, exp = text.partition("e")
    whole, _, frac = mantissa.partition(".")
    digits_all = whole + frac
    leading = len(digits_all) - len(digits_all.lstrip("0"))
    digits = digits_all.strip("0") or "0"
    k = len(digits)
    n = len(whole) - leading + (int(exp) if exp else 0)
    sign = "-" if v < 0 else ""
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    return sign + digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))


def jcs(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return es_number(float(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
    return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + jcs(value[k]) for k in keys) + "}"


# --- the EvalSpec check (verifying.md, step 5) --------------------------------------------------

def parse_threshold(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (">=", float(value))
    text = str(value).strip()
    for op in (">=", "<=", "==", ">", "<"):
        if text.startswith(op):
            return (op, float(text[len(op):].strip()))
    return (">=", float(text))


def holds(threshold, measured):
    op, bound = threshold
    return {">=": measured >= bound, ">": measured > bound, "<=": measured <= bound,
            "<": measured < bound, "==": measured == bound}[op]


def contradicts(predicate, eval_spec):
    if not isinstance(eval_spec, dict):
        return False
    metrics = predicate.get("metrics") or {}
    for metric, written in (eval_spec.get("thresholds") or {}).items():
        threshold = parse_threshold(written)
        reported = metrics.get(metric)
        if reported is None:
            if predicate["passed"]:
                return True
            continue
        if not isinstance(reported, dict):
            reported = {"value": reported}
        if reported.get("threshold") is not None and parse_threshold(reported["threshold"]) != threshold:
            return True
        if predicate["passed"] and not holds(threshold, float(reported["value"])):
            return True
    if "seed" in eval_spec and eval_spec["seed"] is not None:
        seed = (predicate.get("reproducibility_context") or {}).get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed != eval_spec["seed"]:
            return True
    return False


# --- OpenSSF model-signing (formats.md, "OpenSSF model-signing signatures") ----------------------

def oms_holds(published, files):
    """True when the publication carries no OMS signature, or one that verifies with its key and
    signs exactly the package's files."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    text, pem = published.get("oms_signature"), published.get("oms_public_key")
    if text is None and pem is None:
        return True
    if text is None or pem is None:
        return False
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.key_size not in (256, 384, 521):
        return False
    bundle = json.loads(text)
    if bundle["mediaType"] != "application/vnd.dev.sigstore.bundle.v0.3+json":
        return False
    spki = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hint = (bundle["verificationMaterial"].get("publicKey") or {}).get("hint")
    if hint and hint != sha256(spki).hex():
        return False
    envelope = bundle["dsseEnvelope"]
    payload = base64.b64decode(envelope["payload"])
    payload_type = envelope["payloadType"].encode()
    if payload_type != b"application/vnd.in-toto+json" or len(envelope["signatures"]) != 1:
        return False
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type, len(payload), payload)
    digest = {256: hashes.SHA256(), 384: hashes.SHA384(), 521: hashes.SHA512()}[key.curve.key_size]
    key.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae, ec.ECDSA(digest))
    statement = json.loads(payload)
    if (statement["_type"] != STATEMENT or statement["predicateType"] != "https://model_signing/signature/v1.0"
            or len(statement["subject"]) != 1):
        return False
    resources = statement["predicate"]["resources"]
    if any(r["algorithm"] != "sha256" for r in resources):
        return False
    root = sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hex()
    signed = {r["name"]: r["digest"] for r in resources}
    return (root == statement["subject"][0]["digest"]["sha256"] and len(signed) == len(resources)
            and signed == {f["path"]: f["sha256"].removeprefix("sha256:") for f in files})


# --- keys valid at ledger time (verifying.md, "Keys valid at ledger time") ----------------------

def covers(namespaces, name):
    return any(ns == "*" or name.startswith(ns) for ns in namespaces)


def action(event):
    return event.get("action", "introduce")


def check_key_event(e, time):
    if e["role"] not in ("attester", "publisher"):
        fail(f"a KeyEvent's role is {e['role']!r}")
    parse_vkey(e["key"])
    a = action(e)
    if a == "introduce":
        if not e["namespaces"]:
            fail("a KeyEvent introduces a key for no namespace")
    elif a == "rotate":
        envelope = e["envelope"]
        statement = json.loads(dsse_verify(envelope, parse_vkey(e["previous"]), ROTATION_PAYLOAD))
        if json.loads(dsse_verify(envelope, parse_vkey(e["key"]), ROTATION_PAYLOAD)) != statement:
            fail("a rotation's two signatures cover different statements")
        if (statement != {"type": "custodian.key-rotation.v1", "role": e["role"], "previous": e["previous"],
                          "key": e["key"], "namespaces": e["namespaces"], "reason": e["reason"]}
                or e["previous"] == e["key"] or not e["namespaces"]):
            fail("a rotation KeyEvent differs from its signed statement")
    elif a == "revoke":
        if not (e.get("reason") or "").strip():
            fail("a revocation without a reason")
        effective = e.get("effective_ms", time)
        if effective > time or (effective < time and e["reason"] != "compromise"):
            fail("a revocation's effective time is after its entry, or back-dated without a compromise")
    else:
        fail(f"a KeyEvent's action is {a!r}")


def judge(keys, role, key, name, index, time):
    """None when a signature by key over an entry about name at (index, time) counts."""
    if role == "attester" and not any(
            i < index and e["role"] == role and e["key"] == key and action(e) in ("introduce", "rotate")
            and covers(e["namespaces"], name) for i, _, e in keys):
        return "not introduced"
    for i, t, e in keys:
        if e["role"] != role:
            continue
        if (action(e) == "rotate" and i < index and e.get("previous") == key
                and (role == "attester" or name in e["namespaces"])):
            return f"rotated away at entry {i}"
        if action(e) == "revoke" and e["key"] == key and (i < index or e.get("effective_ms", t) <= time):
            return f"revoked at entry {i}"
    return None


def judge_publisher(keys, key, name, pinned, index, time):
    if key != pinned and not any(
            i < index and e["role"] == "publisher" and e["key"] == key
            and action(e) in ("introduce", "rotate") and name in e["namespaces"] for i, _, e in keys):
        return "not introduced"
    return judge(keys, "publisher", key, name, index, time)


# --- pre-registration (verifying.md, "Pre-registration") -----------------------------------------

def run_facts(p):
    context = p.get("reproducibility_context") or {}
    uint = lambda v: v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
    metrics = {}
    for name, m in (p.get("metrics") or {}).items():
        m = m if isinstance(m, dict) else {"value": m}
        metrics[name] = (float(m["value"]), m.get("threshold"))
    harness = context.get("harness_sha256")
    return {"harness": harness if isinstance(harness, str) else None,
            "sample_size": uint(context.get("sample_size")), "seed": uint(context.get("seed")),
            "metrics": metrics}


def check_prereg(e, published):
    statement = json.loads(dsse_verify(e["envelope"], parse_vkey(e["signer_key"])))
    p = statement["predicate"]
    subject = statement["subject"]
    if (statement["_type"] != STATEMENT or statement["predicateType"] != PREREG_PREDICATE
            or len(subject) != 1 or subject[0]["name"] != f"{p['package']}@{p['version']}"
            or "sha256:" + subject[0]["digest"]["sha256"] != published["manifest"]
            or e["manifest"] != published["manifest"]):
        fail("a pre-registration's statement is not about the published manifest")
    comparator, value = parse_threshold(f"{p['comparator']} {p['threshold']}")
    signed = {"name": p["package"], "version": p["version"], "eval_id": p["eval_id"], "metric": p["metric"],
              "comparator": comparator, "threshold": es_number(value),
              "data_pack_sha256": p.get("data_pack_sha256"), "sample_size": p["sample_size"],
              "seed": p.get("seed"), "harness_sha256": p["harness_sha256"]}
    for field, want in signed.items():
        if e.get(field) != want:
            fail(f"a pre-registration's {field} differs from its signed statement")
    return {"eval": e["eval_id"], "metric": e["metric"],
            "threshold": parse_threshold(f"{e['comparator']} {e['threshold']}"),
            "data_pack": e.get("data_pack_sha256"), "sample_size": e["sample_size"], "seed": e.get("seed"),
            "harness": e["harness_sha256"]}


def mismatch(prereg, facts, run_pack, passed, manifest_threshold):
    if prereg["data_pack"] is not None and run_pack != prereg["data_pack"]:
        return "preregistration_data_pack_mismatch"
    if facts["harness"] != prereg["harness"]:
        return "preregistration_harness_mismatch"
    if facts["sample_size"] != prereg["sample_size"]:
        return "preregistration_sample_size_mismatch"
    if prereg["seed"] is not None and facts["seed"] != prereg["seed"]:
        return "preregistration_seed_mismatch"
    reported = facts["metrics"].get(prereg["metric"])
    if manifest_threshold is not None and manifest_threshold != prereg["threshold"]:
        return "preregistration_threshold_mismatch"
    if reported is not None and reported[1] is not None:
        try:
            if parse_threshold(reported[1]) != prereg["threshold"]:
                return "preregistration_threshold_mismatch"
        except ValueError:
            return "preregistration_threshold_mismatch"
    if passed and (reported is None or not holds(prereg["threshold"], reported[0])):
        return "preregistration_threshold_unmet"
    return None


def license_ok(license_id, registry_licenses):
    if license_id in registry_licenses:
        return True
    if license_id.startswith("LicenseRef-"):
        return True
    licensing = get_spdx_licensing()
    try:
        info = licensing.validate(license_id)
    except Exception:
        return False
    return not info.errors and not info.invalid_symbols


# --- the bundle -----------------------------------------------------------------------------------

def verify(bundle, vkey):
    if bundle.get("type") != "custodian.badge-bundle.v1":
        fail("not a custodian.badge-bundle.v1")
    badge = bundle["badge"]
    if badge["policy"] not in (POLICY_V3, POLICY_V4):
        fail(f"this verifier implements {POLICY_V3} and {POLICY_V4}, the bundle says {badge['policy']}")
    v4 = badge["policy"] == POLICY_V4
    size, root = open_checkpoint(bundle["checkpoint"], vkey)
    # Bodies of sealed entries, by their "sha256:<hex>" digest (formats.md, "Sealed entries").
    bodies = {}
    for text in bundle.get("bodies", []):
        body = base64.b64decode(text)
        bodies["sha256:" + sha256(body).hex()] = body
    entries = {}
    for item in bundle["entries"]:
        data = base64.b64decode(item["entry"])
        proof = [base64.b64decode(h) for h in item["proof"]]
        verify_inclusion(item["index"], size, sha256(b"\x00" + data), proof, root)
        if item["index"] in entries:
            fail("an index appears twice")
        entry = cbor2.loads(data)
        if entry["kind"] == "Sealed":
            # The entry commits to a body by digest and size; the body holds the event.
            digest, length = entry["payload"]["body"], entry["payload"]["size"]
            body = bodies.get(digest)
            if body is None or len(body) != length:
                fail(f"entry {item['index']} is sealed and the bundle lacks its body {digest}")
            sealed = cbor2.loads(body)
            if set(sealed) != {"kind", "payload", "salt"} or sealed["kind"] == "Sealed":
                fail(f"entry {item['index']}: the sealed body is malformed")
            entry = dict(entry, kind=sealed["kind"], payload=sealed["payload"])
        entries[item["index"]] = entry

    about = lambda p: p.get("name") == badge["name"] and p.get("version") == badge["version"]
    publications, runs, scans, yanks, keys, preregs, issued = [], [], [], [], [], [], []
    data_pack = None
    for index in sorted(entries):
        kind, payload, time = entries[index]["kind"], entries[index]["payload"], entries[index]["time"]
        if kind == "PackagePublished" and about(payload):
            publications.append((index, payload))
        elif kind == "KeyEvent":
            check_key_event(payload, time)
            keys.append((index, time, payload))
        elif kind == "EvalPreregistered" and about(payload):
            preregs.append((index, time, payload))
        elif kind == "RunAttested" and about(payload):
            runs.append((index, time, payload))
        elif kind == "ScanRecorded" and about(payload):
            scans.append((index, payload))
        elif kind == "DataPackRegistered" and about(payload):
            pack = payload["pack"]
            if pack["mode"] == "hosted" and pack.get("sha256"):
                data_pack = (index, pack["sha256"])
        elif kind == "VersionYanked" and about(payload):
            yanks.append(index)
        elif kind == "BadgeIssued" and about(payload):
            issued.append((index, payload))
    if len(publications) != 1:
        fail(f"the bundle holds {len(publications)} publications of the version, not one")
    publication, published = publications[0]

    manifest_bytes = base64.b64decode(bundle["manifest"])
    if "sha256:" + sha256(manifest_bytes).hex() != published["manifest"]:
        fail("the bundled manifest is not the published one")
    manifest = yaml.safe_load(manifest_bytes.decode())

    signature_ok = True
    try:
        statement = json.loads(dsse_verify(published["envelope"], parse_vkey(published["publisher_key"])))
        predicate = statement["predicate"]
        files = sorted(predicate["files"], key=lambda f: f["path"].encode())
        leaves = [sha256(b"\x00" + f"{f['sha256']} {f['size']} {f['path']}\n".encode()) for f in files]
        manifest_file = [f for f in files if f["path"] == "manifest.yaml"]
        signature_ok = (statement["_type"] == STATEMENT and statement["predicateType"] == PACKAGE_PREDICATE
                        and "sha256:" + mth(leaves).hex() == published["root"] == predicate["root"]
                        and manifest_file and manifest_file[0]["sha256"] == published["manifest"]
                        and predicate["name"] == published["name"] and predicate["version"] == published["version"]
                        and oms_holds(published, predicate["files"]))
    except (InvalidSignature, Invalid, KeyError, ValueError):
        signature_ok = False

    evals = manifest.get("evals") or []
    eval_specs = {(e if isinstance(e, str) else e["id"]): e for e in evals}
    publisher_problem = judge_publisher(keys, published["publisher_key"], published["name"],
                                        published["publisher_key"], publication, entries[publication]["time"])
    counted_preregs = []
    for index, time, e in preregs:
        prereg = check_prereg(e, published)
        if (judge_publisher(keys, e["signer_key"], e["name"], published["publisher_key"], index, time) is None
                or judge(keys, "attester", e["signer_key"], e["name"], index, time) is None):
            counted_preregs.append(dict(prereg, index=index))
    latest, every_run = {}, []
    for index, time, run in runs:
        key_problem = judge(keys, "attester", run["attester_key"], run["name"], index, time)
        if key_problem == "not introduced":
            fail(f"entry {index}: the attester key is not registered for {run['name']} before the run")
        statement = json.loads(dsse_verify(run["envelope"], parse_vkey(run["attester_key"])))
        p = statement["predicate"]
        if (statement["predicateType"] != RUN_PREDICATE
                or statement["subject"][0]["name"] != f"{p['package']}@{p['version']}"
                or "sha256:" + statement["subject"][0]["digest"]["sha256"] != run["manifest"]
                or run["manifest"] != published["manifest"]
                or p["eval_id"] != run["eval_id"] or p["model"] != run["model"]
                or p["passed"] != run["passed"] or p.get("data_pack_sha256") != run.get("data_pack_sha256")
                or p["runner"]["id"] != run["runner"]
                or "sha256:" + sha256(jcs(p["reproducibility_context"]).encode()).hex() != run["context_sha256"]):
            fail(f"entry {index}: the entry differs from its signed statement")
        key = (run["eval_id"], run["model"])
        every_run.append((index, key, key_problem))
        if v4 and key_problem is not None:
            continue
        if key not in latest or latest[key][0] < index:
            latest[key] = (index, time, run, contradicts(p, eval_specs.get(run["eval_id"])), run_facts(p))

    reasons, used = [], [publication]
    reason = lambda code, state, eval_id=None, model=None, entry=None: reasons.append(
        (code, state, eval_id, model, entry))
    if not signature_ok:
        reason("signature_invalid", "failing", entry=publication)
    if v4 and publisher_problem is not None:
        reason("publisher_key_invalid", "failing", entry=publication)

    def prereg_reason(eval_id, index, run, facts):
        mine = sorted((p for p in counted_preregs if p["eval"] == eval_id), key=lambda p: p["index"])
        before = [p for p in mine if p["index"] < index]
        if not before:
            if mine:
                used.append(mine[0]["index"])
                return "run_before_preregistration", "review", index
            return "preregistration_missing", "review", index
        governing = before[-1]
        used.append(governing["index"])
        spec = eval_specs.get(eval_id)
        written = ((spec.get("thresholds") or {}) if isinstance(spec, dict) else {}).get(governing["metric"])
        code = mismatch(governing, facts, run.get("data_pack_sha256"), run["passed"],
                        parse_threshold(written) if written is not None else None)
        if code:
            return code, "failing", index
        terms = lambda p: {k: v for k, v in p.items() if k != "index"}
        for p in mine:
            if p["index"] > index and terms(p) != terms(governing):
                used.append(p["index"])
                return "preregistration_changed", "review", p["index"]
        return None
    required = [(e if isinstance(e, str) else e["id"]) for e in evals
                if isinstance(e, str) or e.get("required", True) is not False]
    if not required:
        reason("no_evals", "review")
    base = manifest.get("base_model")
    models = ((manifest.get("prompt") or {}).get("compatible_models")
              or ([base] if isinstance(base, str) else list(base or [])))
    for eval_id in required:
        for model in models:
            found = latest.get((eval_id, model))
            if v4:
                for index, key, problem in sorted(every_run):
                    if key == (eval_id, model) and problem is not None and (found is None or index > found[0]):
                        used.append(index)
                        reason("run_key_invalid", "review", eval_id, model, index)
            if found is None:
                reason("run_missing", "review", eval_id, model)
                continue
            index, time, run, bad, facts = found
            used.append(index)
            pre = prereg_reason(eval_id, index, run, facts) if v4 and run["passed"] and not bad else None
            if bad:
                reason("run_invalid", "failing", eval_id, model, index)
            elif not run["passed"]:
                reason("run_failed", "failing", eval_id, model, index)
            elif pre:
                reason(pre[0], pre[1], eval_id, model, pre[2])
            elif data_pack and run.get("data_pack_sha256") != data_pack[1]:
                reason("run_data_pack_missing", "review", eval_id, model, index)
            elif badge["evaluated_ms"] - time > badge["max_age_ms"]:
                reason("run_stale", "review", eval_id, model, index)

    def judge_scans(target_root, prefix):
        per_scanner = {}
        for index, scan in scans:
            if scan["root"] == target_root and (scan["scanner"] not in per_scanner
                                                or per_scanner[scan["scanner"]][0] < index):
                per_scanner[scan["scanner"]] = (index, scan)
        if not per_scanner:
            reason(prefix + "scan_missing", "review")
            return
        for scanner in sorted(per_scanner, key=str.encode):
            index, scan = per_scanner[scanner]
            used.append(index)
            if scan["verdict"] == "flagged":
                reason(prefix + "scan_flagged", "failing", entry=index)
            elif scan["verdict"] != "clean":
                reason(prefix + "scan_error", "review", entry=index)

    judge_scans(published["root"], "")
    if data_pack:
        used.append(data_pack[0])
        judge_scans(data_pack[1], "data_pack_")
    license_field = manifest.get("license")
    license_id = license_field if isinstance(license_field, str) else license_field["spdx"]
    if not license_ok(license_id, badge.get("registry_licenses", [])):
        reason("license_undeclared", "review")
    if yanks:
        used.append(max(yanks))
        reason("yanked", "review", entry=max(yanks))

    state = "failing" if any(r[1] == "failing" for r in reasons) else "review" if reasons else "green"
    bundled = [(r["code"], r["state"], r.get("eval"), r.get("model"), r.get("entry")) for r in badge["reasons"]]
    if state != badge["state"]:
        fail(f"badge.state: the bundle says {badge['state']}, the evidence gives {state} ({[r[0] for r in reasons]})")
    if reasons != bundled:
        fail(f"badge.reasons: the bundle says {bundled}, the evidence gives {reasons}")
    if sorted(set(used)) != badge["evidence"]:
        fail(f"badge.evidence: the bundle says {badge['evidence']}, the evidence gives {sorted(set(used))}")
    if issued:
        latest_issued = max(issued, key=lambda i: i[0])[1]
        if (latest_issued["state"] != badge["state"] or latest_issued["evidence"] != badge["evidence"]
                or latest_issued.get("registry_licenses", []) != badge.get("registry_licenses", [])):
            fail("the BadgeIssued entry differs from the bundle's badge")
    return state, len(entries), size


def main(path, key_arg):
    try:
        key_text = open(key_arg).read()
    except OSError:
        key_text = key_arg
    try:
        with open(path) as f:
            bundle = json.load(f)
        state, count, size = verify(bundle, parse_vkey(key_text))
    except (Invalid, InvalidSignature, KeyError, ValueError, TypeError) as e:
        print(f"FAIL: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 1
    print(f"ok {bundle['badge']['name']}@{bundle['badge']['version']} {state.upper()}: "
          f"{count} entries proven in a log of {size}, badge recomputed under {bundle['badge']['policy']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
