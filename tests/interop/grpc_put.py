"""Uploads blobs with ContentStore.Put and WriteUpload through grpcio (PyPI), a gRPC stack
nobody here wrote.

Usage: grpc_put.py HOST:PORT TOKEN

The messages are built here in the protobuf wire format (no generated code, so nothing of
Custodian's build is trusted), chunks of many sizes among them, one chunk message with an
unknown field after its bytes (which protobuf says to skip) and one empty message. Then a Put
whose first message is a chunk, which the daemon refuses.

Prints a JSON report: for each upload the SHA-256 and size the daemon answered with and the
SHA-256 of the bytes sent, how big the upload session said it was, and the refusal's code and
details.
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
    print(json.dumps(report))


if __name__ == "__main__":
    main()
