"""Appends to the ledger on one AppendStream through grpcio (PyPI), a gRPC stack nobody here
wrote: the bidirectional stream's framing, half-close and per-request answers as another
implementation sends and reads them.

Usage: grpc_append_stream.py HOST:PORT TOKEN

Sends 50 requests on one stream before reading any answer, each an entry of kind GrpcioProbe
whose payload is the CBOR map {"n": i}; request 20 carries bytes that are not CBOR, and requests
from 40 on ask for compact answers (where the entry is, no receipt). Then opens
a stream with a token that is not one, and one whose second message is not an AppendRequest.

The messages are built and read here in the protobuf wire format (no generated code, so nothing
of Custodian's build is trusted).

Prints a JSON report: each answer's receipt (log index, entry bytes in hex, receipt JSON) and
place (log index, leaf hash in hex, checkpoint size), or its error code and message; then the code and details of the refused stream, and of the stream ended by the
malformed message with how many answers came before its end.
"""

import json
import sys

import grpc

from protowire import fields, varint

REFUSED_AT = 20
COMPACT_FROM = 40


def field(number, payload):
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def cbor_uint(n):
    """A CBOR unsigned integer (major type 0) below 2**16."""
    if n < 24:
        return bytes([n])
    if n < 256:
        return bytes([0x18, n])
    return bytes([0x19, n >> 8, n & 0xFF])


def request(i):
    """AppendRequest: kind = 1, payload_cbor = 2, compact = 3 (a varint; left off when false)."""
    payload = b"\xff\xff" if i == REFUSED_AT else b"\xa1\x61n" + cbor_uint(i)
    compact = varint(3 << 3) + varint(1) if i >= COMPACT_FROM else b""
    return field(1, b"GrpcioProbe") + field(2, payload) + compact


def answer(message):
    """AppendStreamResponse: receipt = 1, error_code = 2, error_message = 3, log_index = 4,
    leaf_hash = 5, checkpoint_size = 6."""
    out = {"error_code": 0}
    for number, value in fields(message):
        if number == 1:
            receipt = {}
            for inner, item in fields(value):
                if inner == 1:
                    receipt["index"] = item
                elif inner == 2:
                    receipt["entry"] = item.hex()
                elif inner == 5:
                    receipt["json"] = item.decode()
            out["receipt"] = receipt
        elif number == 2:
            out["error_code"] = value
        elif number == 3:
            out["error_message"] = value.decode()
        elif number == 4:
            out["log_index"] = value
        elif number == 5:
            out["leaf_hash"] = value.hex()
        elif number == 6:
            out["checkpoint_size"] = value
    return out


def main():
    address, token = sys.argv[1:3]
    channel = grpc.insecure_channel(address)
    call = channel.stream_stream(
        "/custodian.ledger.v1.Ledger/AppendStream",
        request_serializer=lambda request: request,
        response_deserializer=lambda response: response,
    )
    requests = [request(i) for i in range(50)]
    answers = call(iter(requests), metadata=[("authorization", "Bearer " + token)])
    report = {"answers": [answer(message) for message in answers]}
    try:
        list(call(iter([request(0)]), metadata=[("authorization", "Bearer not-a-token")]))
        report["refused_stream"] = "answered"
    except grpc.RpcError as err:
        report["refused_stream"] = {"code": err.code().name, "details": err.details()}
    # A length-delimited field 1 that claims more bytes than follow: not a protobuf message.
    malformed = {"answers": 0}
    try:
        for message in call(
            iter([request(100), b"\x0a\x09ab"]),
            metadata=[("authorization", "Bearer " + token)],
        ):
            malformed["answers"] += 1
            malformed["first"] = answer(message)
        malformed["code"] = "OK"
    except grpc.RpcError as err:
        malformed["code"] = err.code().name
        malformed["details"] = err.details()
    report["malformed"] = malformed
    print(json.dumps(report))


if __name__ == "__main__":
    main()
