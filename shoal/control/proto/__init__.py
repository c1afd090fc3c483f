"""The wire protocol between clients and workers: frames, operations and error mapping.

One framed stream protocol serves control and data, on the worker's Unix socket (and on TCP
in a cluster). Kept apart from both the client and the worker, which import it.
"""

from ._errors import WIRE_TYPES, decode_error, encode_error
from ._frames import (
    FRAME,
    MAX_FDS,
    MAX_HEADER,
    ProtocolError,
    recv_frame,
    recv_header,
    recv_into,
    send_frame,
)
from ._ops import DATA, GENERATIONS, LOCATE, OPS, PROTOCOL_VERSION, check_request

__all__ = [
    "DATA",
    "FRAME",
    "GENERATIONS",
    "LOCATE",
    "MAX_FDS",
    "MAX_HEADER",
    "OPS",
    "PROTOCOL_VERSION",
    "WIRE_TYPES",
    "ProtocolError",
    "check_request",
    "decode_error",
    "encode_error",
    "recv_frame",
    "recv_header",
    "recv_into",
    "send_frame",
]
