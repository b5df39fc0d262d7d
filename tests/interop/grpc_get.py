"""Reads a blob with ContentStore.Get through grpcio (PyPI), a gRPC stack nobody here wrote.

Usage: grpc_get.py HOST:PORT TOKEN SHA256_DIGEST OFFSET LIMIT

The messages are parsed here from the protobuf wire format (no generated code, so nothing of
Custodian's build is trusted): every GetResponse's `blob` field (1) and `data` field (2), in
order. Then the same call for a digest that is not in custody.

Prints a JSON report: how many messages, how many carried metadata and in which message, the
sha256 the metadata names, the bytes received and their SHA-256, and the refusal's code and
details.
"""

import hashlib
import json
import sys

import grpc

from protowire import fields, varint


def get_request(digest, offset, limit):
    out = b"\x0a" + varint(len(digest)) + digest.encode()
    if offset:
        out += b"\x10" + varint(offset)
    if limit:
        out += b"\x18" + varint(limit)
    return out


def main():
    address, token, digest, offset, limit = sys.argv[1:6]
    channel = grpc.insecure_channel(address)
    call = channel.unary_stream(
        "/custodian.cas.v1.ContentStore/Get",
        request_serializer=lambda request: request,
        response_deserializer=lambda response: response,
    )
    metadata = [("authorization", "Bearer " + token)]
    report = {"messages": 0, "metadata_in": [], "data": 0}
    hasher = hashlib.sha256()
    for n, message in enumerate(call(get_request(digest, int(offset), int(limit)), metadata=metadata)):
        report["messages"] += 1
        for field, value in fields(message):
            if field == 1:
                report["metadata_in"].append(n)
                info = dict(fields(value))
                report["metadata_sha256"] = info.get(1, b"").decode()
                report["metadata_size"] = info.get(3, 0)
            elif field == 2:
                report["data"] += len(value)
                hasher.update(value)
    report["data_sha256"] = "sha256:" + hasher.hexdigest()
    try:
        list(call(get_request("sha256:" + "0" * 64, 0, 0), metadata=metadata))
        report["absent"] = "answered"
    except grpc.RpcError as err:
        report["absent"] = {"code": err.code().name, "details": err.details()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
