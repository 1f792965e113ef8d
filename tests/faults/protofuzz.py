"""Hypothesis strategies for any protobuf message, built from its descriptor (no schema by hand).

Values reach for the edges: int64 extremes, amounts around the money limit, enum numbers the
schema does not define, empty and odd strings, nested messages a few levels deep, and timestamps
anywhere in int64 seconds. Every jetledger RPC's request is drawn from ``requests(method)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from jetledger.card.v1 import card_pb2
from jetledger.ledger.v1 import ledger_pb2
from jetledger.notification.v1 import notification_pb2
from jetledger.transaction.v1 import transaction_pb2

F = FieldDescriptor
MONEY_EDGES = [0, 1, -1, 10**15, 10**15 + 1, -(10**15), 2**63 - 1, -(2**63), 2**31]
IDS = ["", "card-1", "c", "x" * 200, "ä-card", "card id", "-", "4111111111111111", "../etc"]


@dataclass(frozen=True)
class Rpc:
    """One RPC of a jetledger service: its full method path and request/response types."""

    service: str  # e.g. "card" (the Settings port field is f"{service}_port")
    path: str  # "/jetledger.card.v1.CardService/GetCard"
    method: MethodDescriptor

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)


def all_rpcs() -> list[Rpc]:
    """Every RPC of the four services, from their descriptors."""
    found = []
    for service, module in (
        ("card", card_pb2),
        ("transaction", transaction_pb2),
        ("ledger", ledger_pb2),
        ("notification", notification_pb2),
    ):
        for svc in module.DESCRIPTOR.services_by_name.values():
            for method in svc.methods:
                found.append(Rpc(service, f"/{svc.full_name}/{method.name}", method))
    return found


def _int(bits: int, signed: bool) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [v for v in MONEY_EDGES if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    F.TYPE_INT64: _int(64, True),
    F.TYPE_SINT64: _int(64, True),
    F.TYPE_SFIXED64: _int(64, True),
    F.TYPE_INT32: _int(32, True),
    F.TYPE_SINT32: _int(32, True),
    F.TYPE_SFIXED32: _int(32, True),
    F.TYPE_UINT64: _int(64, False),
    F.TYPE_FIXED64: _int(64, False),
    F.TYPE_UINT32: _int(32, False),
    F.TYPE_FIXED32: _int(32, False),
    F.TYPE_BOOL: st.booleans(),
    F.TYPE_STRING: st.one_of(st.sampled_from(IDS), st.text(max_size=30)),
    F.TYPE_BYTES: st.binary(max_size=40),
    F.TYPE_DOUBLE: st.floats(),
    F.TYPE_FLOAT: st.floats(width=32),
}


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if field.enum_type is not None:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), _int(32, True))
    if field.message_type is not None:
        if depth >= 3:
            return None
        return messages(field.message_type, depth + 1)
    return _SCALARS.get(field.type)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, value in values.items():
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for entry in value:
                key, item = entry.key, entry.value
                if isinstance(item, Message):
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of ``descriptor``'s type: each field set or not, values at the edges."""
    cls = GetMessageClass(descriptor)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        value = _value(field, depth)
        if value is None:
            continue
        optional[field.name] = st.lists(value, max_size=3) if field.is_repeated else value
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: _build(cls, kw))


def requests(rpc: Rpc) -> st.SearchStrategy[Message]:
    """Requests of ``rpc``'s input type."""
    return messages(rpc.method.input_type)
