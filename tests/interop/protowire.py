"""The protobuf wire format, as far as the interop scripts need it: no generated code, so
nothing of Custodian's build is trusted."""


def varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out += bytes([low | 0x80])
        else:
            return out + bytes([low])


def read_varint(buf, i):
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def fields(message):
    """(field number, value) of each field: bytes for a length-delimited one, an int for a
    varint; other wire types are an error (GetResponse and BlobInfo have none)."""
    i = 0
    while i < len(message):
        key, i = read_varint(message, i)
        if key & 7 == 0:
            value, i = read_varint(message, i)
            yield key >> 3, value
        elif key & 7 == 2:
            n, i = read_varint(message, i)
            yield key >> 3, message[i : i + n]
            i += n
        else:
            raise ValueError(f"unexpected wire type {key & 7} for field {key >> 3}")
