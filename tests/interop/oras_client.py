"""Drives Custodian's OCI front end with oras-py (PyPI `oras`), a client nobody here wrote.

usage: oras_client.py HOST TOKEN WORKDIR artifacts
         pushes files, pushes an attachment whose subject is the first artifact, lists the
         subject's referrers, pulls both back; prints a JSON report.
       oras_client.py HOST TOKEN WORKDIR push NAME:TAG
         pushes every file under WORKDIR (outside .custodian/) with its relative path as the
         title annotation (through an annotation file, as `oras push --annotation-file` does).
       oras_client.py HOST TOKEN WORKDIR pull NAME:TAG OUTDIR
         pulls an artifact (a published Behavior Package) into OUTDIR; prints the files and the
         referrers of its manifest as JSON.
"""

import hashlib
import json
import os
import sys

import oras.client
import oras.oci


def client(host, token):
    c = oras.client.OrasClient(hostname=host, insecure=True, auth_backend="basic")
    if token:
        # Not c.login(), which would also write the token into ~/.docker/config.json.
        c.auth.set_basic_auth("ci", token)
    return c


def referrers(c, host, repo, digest):
    response = c.do_request(f"http://{host}/v2/{repo}/referrers/{digest}")
    response.raise_for_status()
    return response.json()


def digest_of(c, host, repo, reference):
    response = c.do_request(
        f"http://{host}/v2/{repo}/manifests/{reference}",
        "HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"], int(response.headers["Content-Length"])


def artifacts(host, token, workdir):
    c = client(host, token)
    os.chdir(workdir)
    with open("model.bin", "wb") as f:
        f.write(bytes(range(256)) * 4096)
    with open("card.md", "w") as f:
        f.write("# a model card\n")
    target = f"{host}/oras/demo:v1"
    c.push(target=target, files=["model.bin", "card.md"], quiet=True)
    subject = oras.oci.Subject.from_manifest(c.get_manifest(target))
    with open("sbom.json", "w") as f:
        json.dump({"sbom": True}, f)
    pushed = c.push(
        target=f"{host}/oras/demo:sbom",
        files=["sbom.json"],
        subject=subject,
        quiet=True,
    )
    listed = referrers(c, host, "oras/demo", subject.digest)
    out = os.path.join(workdir, "pulled")
    files = sorted(os.path.basename(p) for p in c.pull(target=target, outdir=out))
    same = all(
        open(os.path.join(out, name), "rb").read() == open(name, "rb").read()
        for name in ["model.bin", "card.md"]
    )
    print(
        json.dumps(
            {
                "subject": subject.digest,
                "oci_subject_header": pushed.headers.get("OCI-Subject"),
                "attachment": pushed.headers.get("Docker-Content-Digest"),
                "referrers": listed,
                "pulled": files,
                "identical": same,
            }
        )
    )


def push(host, token, workdir, reference):
    c = client(host, token)
    os.chdir(workdir)
    files = []
    for root, dirs, names in os.walk("."):
        dirs[:] = sorted(d for d in dirs if d != ".custodian")
        for name in sorted(names):
            files.append(os.path.relpath(os.path.join(root, name), "."))
    annotations = {path: {"org.opencontainers.image.title": path} for path in files}
    annotation_file = os.path.join(os.path.dirname(workdir.rstrip("/")), "annotations.json")
    with open(annotation_file, "w") as f:
        json.dump(annotations, f)
    response = c.push(
        target=f"{host}/{reference}", files=files, annotation_file=annotation_file, quiet=True
    )
    print(json.dumps({"digest": response.headers.get("Docker-Content-Digest"), "files": files}))


def pull(host, token, workdir, reference, outdir):
    c = client(host, token)
    repo, tag = reference.rsplit(":", 1)
    files = c.pull(target=f"{host}/{reference}", outdir=outdir)
    digest, _ = digest_of(c, host, repo, tag)
    manifest = c.get_manifest(f"{host}/{reference}")
    listed = referrers(c, host, repo, digest)
    print(
        json.dumps(
            {
                "digest": digest,
                "manifest": manifest,
                "files": sorted(os.path.relpath(p, outdir) for p in files),
                "sha256": {
                    os.path.relpath(p, outdir): hashlib.sha256(open(p, "rb").read()).hexdigest()
                    for p in files
                },
                "referrers": listed,
            }
        )
    )


if __name__ == "__main__":
    host, token, workdir, command = sys.argv[1:5]
    if command == "artifacts":
        artifacts(host, token, workdir)
    elif command == "push":
        push(host, token, workdir, sys.argv[5])
    elif command == "pull":
        pull(host, token, workdir, sys.argv[5], sys.argv[6])
    else:
        sys.exit(f"unknown command {command}")
