"""The contracts of jetledger: ids, money, subjects, the event catalogue and the protobuf APIs.

Everything here is pure (stdlib + msgspec): no I/O, no NATS, no Postgres, no gRPC server code.
The generated protobuf modules live apart, under ``contracts/gen`` (importable as ``jetledger.*``).
"""
