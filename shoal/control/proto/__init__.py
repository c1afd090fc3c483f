"""The wire protocol between clients and workers: frames, operations, authentication and
error mapping.

One framed stream protocol serves control and data, on the worker's Unix socket (and on TCP
in a cluster). Kept apart from both the client and the worker, which import it.
"""

from ._auth import (
    ADMIN,
    CLIENT,
    NONCE_BYTES,
    SCHEME,
    WORKER,
    check_proof,
    load_secret,
    new_nonce,
    new_secret,
    proof,
    transcript,
)
from ._errors import WIRE_TYPES, decode_error, encode_error
from ._frames import (
    FRAME,
    MAX_FDS,
    MAX_GREETING_HEADER,
    MAX_HEADER,
    MAX_REQUEST_HEADER,
    ProtocolError,
    discard,
    is_tls,
    pack_header,
    recv_frame,
    recv_header,
    recv_into,
    send_frame,
)
from ._ops import (
    ADMIN_OPS,
    DATA,
    GENERATIONS,
    LOCATE,
    MAX_LIST,
    MAX_READ_BYTES,
    OPS,
    PROTOCOL_VERSION,
    check_request,
    check_version,
)

__all__ = [
    "ADMIN",
    "ADMIN_OPS",
    "CLIENT",
    "DATA",
    "FRAME",
    "GENERATIONS",
    "LOCATE",
    "MAX_FDS",
    "MAX_GREETING_HEADER",
    "MAX_HEADER",
    "MAX_LIST",
    "MAX_READ_BYTES",
    "MAX_REQUEST_HEADER",
    "NONCE_BYTES",
    "OPS",
    "PROTOCOL_VERSION",
    "SCHEME",
    "WIRE_TYPES",
    "WORKER",
    "ProtocolError",
    "check_proof",
    "check_request",
    "check_version",
    "decode_error",
    "discard",
    "encode_error",
    "is_tls",
    "load_secret",
    "new_nonce",
    "new_secret",
    "pack_header",
    "proof",
    "recv_frame",
    "recv_header",
    "recv_into",
    "send_frame",
    "transcript",
]
