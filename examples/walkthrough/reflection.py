"""Lists a gRPC server's services through server reflection, as `grpcurl list` does.

grpcurl is not packaged for Debian; grpcio-reflection (PyPI) is a reflection client nobody here
wrote. Usage: python3 reflection.py HOST:PORT [SERVICE]  (with SERVICE: its methods too).
"""

import sys

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from google.protobuf.descriptor_pool import DescriptorPool


def main() -> int:
    channel = grpc.insecure_channel(sys.argv[1])
    database = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(database.get_services())
    if len(sys.argv) < 3:
        for name in services:
            print(name)
        return 0
    pool = DescriptorPool(database)
    service = pool.FindServiceByName(sys.argv[2])
    for method in service.methods:
        print(f"{service.full_name}.{method.name}({method.input_type.full_name}) returns ({method.output_type.full_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
