"""Uploads a hosted data pack with tuspy (PyPI), a tus 1.0 client nobody here wrote.

Usage: tus_client.py COLLECTION_URL TOKEN FILE METADATA_JSON STATE_FILE

1. uploads the first half in 4 MiB chunks, each with a tuspy `Upload-Checksum: sha1 ...`, and
   stops (as a client that goes away);
2. sends one PATCH whose Upload-Checksum does not match its bytes: tus says 460 and nothing kept;
3. a new client and uploader find the upload in tuspy's own URL store and resume it from the
   server's offset to the end.

Prints a JSON report of what happened at each step.
"""

import base64
import hashlib
import json
import sys

import requests
from tusclient import client
from tusclient.storage import filestorage

url, token, path, metadata, state = sys.argv[1:6]
auth = {"Authorization": f"Bearer {token}"}
storage = filestorage.FileStorage(state)


def uploader():
    tus = client.TusClient(url, headers=dict(auth))
    return tus.uploader(
        path,
        chunk_size=4 << 20,
        metadata={"metadata": metadata, "filename": "pack.bin"},
        store_url=True,
        url_storage=storage,
        upload_checksum=True,
    )


report = {}
options = requests.options(url, headers=auth)
report["options"] = {
    "status": options.status_code,
    "tus_version": options.headers.get("Tus-Version"),
    "extensions": options.headers.get("Tus-Extension"),
    "checksums": options.headers.get("Tus-Checksum-Algorithm"),
}

first = uploader()
size = first.get_file_size()
first.upload(stop_at=size // 2)
report["first_offset"] = first.offset
report["url"] = first.url

junk = b"x" * 1000
bad = requests.patch(
    first.url,
    data=junk,
    headers={
        **auth,
        "Tus-Resumable": "1.0.0",
        "Upload-Offset": str(first.offset),
        "Content-Type": "application/offset+octet-stream",
        "Upload-Checksum": "sha1 " + base64.b64encode(hashlib.sha1(b"y" * 1000).digest()).decode(),
    },
)
report["mismatch_status"] = bad.status_code
report["mismatch_tus_resumable"] = bad.headers.get("Tus-Resumable")
head = requests.head(first.url, headers={**auth, "Tus-Resumable": "1.0.0"})
report["offset_after_mismatch"] = int(head.headers["Upload-Offset"])
report["expires"] = head.headers.get("Upload-Expires")

second = uploader()
report["resumed_url_is_the_same"] = second.url == first.url
report["resumed_at"] = second.offset
second.upload()
report["final_offset"] = second.offset
report["size"] = size
after = requests.head(first.url, headers={**auth, "Tus-Resumable": "1.0.0"})
report["status_after_completion"] = after.status_code
print(json.dumps(report))
