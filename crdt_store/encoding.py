"""lib0 varints and Yjs state vectors, decoded strictly (pycrdt's Python decoder is quadratic
in a varint's length and trusts the input)."""

from __future__ import annotations

#: lib0 varints carry at most 53 bits; 8 bytes hold 56.
MAX_VARINT_BYTES = 8


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it; ValueError if malformed."""
    if pos < len(data) and data[pos] < 0x80:  # one byte: most message types and lengths
        return data[pos], pos + 1
    value = 0
    for shift in range(0, 7 * MAX_VARINT_BYTES, 7):
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
    raise ValueError("varint too long")


def decode_state_vector(state: bytes) -> dict[int, int]:
    """A Yjs state vector: the next expected clock of each client id."""
    count, pos = read_var_uint(state, 0)
    clocks: dict[int, int] = {}
    for _ in range(count):
        client, pos = read_var_uint(state, pos)
        clocks[client], pos = read_var_uint(state, pos)
    return clocks
