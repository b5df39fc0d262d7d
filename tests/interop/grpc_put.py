"""Uploads blobs with ContentStore.Put and WriteUpload through grpcio (PyPI), a gRPC stack
nobody here wrote.

Usage: grpc_put.py HOST:PORT TOKEN

Then a BatchPut of 300 blobs in one message (some of them larger than grpcio's frames, so the
daemon reads them across frame boundaries), one of which declares a digest its bytes do not
have, and FindMissing over what was sent, two digests nobody stored and a malformed one.

The messages are built here in the protobuf wire format (no generated code, so nothing of
Custodian's build is trusted), chunks of many sizes among them, one chunk message with an
unknown field after its bytes (which protobuf says to skip) and one empty message. Then a Put
whose first message is a chunk, which the daemon refuses.

Prints a JSON report: for each upload the SHA-256 and size the daemon answered with and the
SHA-256 of the bytes sent, how big the upload session said it was, and the refusal's code and
details; for the batch, how many of its results name the digest of the bytes sent, the failed
item's error, and what FindMissing answered.
"""

import hashlib
import json
import sys

import grpc

from protowire import fields, varint

def field(number, payload):
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def uint_field(number, value):
    return varint(number << 3) + varint(value)


def content(seed, size):
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


# Sizes that cross the daemon's frames and its batching thresholds in different places.
SIZES = [1, 70_000, 1 << 20, 16 << 10, (1 << 20) + 9, 300_000, 5]


def chunks(data):
    """The data as chunk messages (field 2), one of them with an unknown varint field (15)
    after its bytes, and an empty message among them."""
    messages, at = [], 0
    for n, size in enumerate(SIZES):
        piece = data[at : at + size]
        at += size
        message = field(2, piece)
        if n == 2:
            message += uint_field(15, 7)
        messages.append(message)
        if n == 3:
            messages.append(b"")
    if at < len(data):
        messages.append(field(2, data[at:]))
    return messages


def blob_of(response):
    """(sha256, size) of a PutResponse's blob."""
    for number, value in fields(response):
        if number == 1:
            info = dict(fields(value))
            return info[1].decode(), info.get(3, 0)
    raise ValueError("no blob in the answer")


def main():
    address, token = sys.argv[1:3]
    channel = grpc.insecure_channel(address)
    metadata = [("authorization", "Bearer " + token)]
    identity = dict(request_serializer=lambda r: r, response_deserializer=lambda r: r)
    method = lambda name: "/custodian.cas.v1.ContentStore/" + name
    put = channel.stream_unary(method("Put"), **identity)
    start = channel.unary_unary(method("StartUpload"), **identity)
    write = channel.stream_unary(method("WriteUpload"), **identity)
    finish = channel.unary_unary(method("FinishUpload"), **identity)
    report = {}

    data = content("put", sum(SIZES) + 12_345)
    header = field(1, uint_field(2, len(data)))
    sha256, size = blob_of(put(iter([header] + chunks(data)), metadata=metadata))
    report["put"] = {"sha256": sha256, "size": size, "sent": "sha256:" + hashlib.sha256(data).hexdigest()}

    data = content("write", sum(SIZES) + 54_321)
    status = start(uint_field(2, len(data)), metadata=metadata)
    upload_id = dict(fields(status))[1].decode()
    header = field(1, field(1, upload_id.encode()))
    written = dict(fields(write(iter([header] + chunks(data)), metadata=metadata)))
    sha256, size = blob_of(finish(field(1, upload_id.encode()), metadata=metadata))
    report["write_upload"] = {
        "committed_size": written.get(2, 0),
        "sha256": sha256,
        "size": size,
        "sent": "sha256:" + hashlib.sha256(data).hexdigest(),
    }

    try:
        put(iter([field(2, b"no header first")]), metadata=metadata)
        report["refused"] = None
    except grpc.RpcError as err:
        report["refused"] = {"code": err.code().name, "details": err.details()}

    batch_put = channel.unary_unary(method("BatchPut"), **identity)
    find_missing = channel.unary_unary(method("FindMissing"), **identity)
    blobs = [content(f"batch{i}", 70_000 if i % 50 == 7 else 4096) for i in range(300)]
    sent = ["sha256:" + hashlib.sha256(blob).hexdigest() for blob in blobs]
    wrong = 13
    items = []
    for i, blob in enumerate(blobs):
        item = b""
        if i == wrong:
            item += field(1, ("sha256:" + hashlib.sha256(b"other bytes").hexdigest()).encode())
        elif i % 3 == 0:
            item += field(1, sent[i].encode())
        items.append(field(1, item + field(2, blob)))
    results = [dict(fields(value)) for number, value in fields(batch_put(b"".join(items), metadata=metadata)) if number == 1]
    error = dict(fields(results[wrong].get(3, b"")))
    report["batch_put"] = {
        "results": len(results),
        "stored_as_sent": sum(
            1 for i, result in enumerate(results)
            if 1 in result and dict(fields(result[1]))[1].decode() == sent[i]
        ),
        "wrong": {"code": error.get(1), "message": error.get(2, b"").decode()},
    }

    unknown = ["sha256:" + hashlib.sha256(b"never stored %d" % i).hexdigest() for i in range(2)]
    asked = sent[:wrong] + [unknown[0]] + sent[wrong:] + [unknown[1]]
    answer = find_missing(b"".join(field(1, d.encode()) for d in asked), metadata=metadata)
    report["find_missing"] = {
        "answered": [value.decode() for number, value in fields(answer) if number == 1],
        "expected": [unknown[0], sent[wrong], unknown[1]],
    }
    try:
        find_missing(field(1, sent[0].encode()) + field(1, b"sha256:xyz"), metadata=metadata)
        report["find_missing_refused"] = None
    except grpc.RpcError as err:
        report["find_missing_refused"] = {"code": err.code().name, "details": err.details()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
