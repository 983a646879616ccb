"""Unit tests of the wire protocol helpers (vmpool._protocol)."""

import json

import pytest

from vmpool import _protocol as proto

LIMITS = {"wall_time_s": 1.5, "cpu_time_s": 2, "memory_mb": 64, "max_processes": 4,
          "max_file_size_mb": 1, "max_output_bytes": 100}


def test_encode_decode_round_trip() -> None:
    message = proto.request(3, "write_file", path="/tmp/ü", data_b64=proto.b64encode(b"\x00\xff"))
    line = proto.encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert proto.decode(line) == message
    assert proto.b64decode(proto.decode(line)["data_b64"]) == b"\x00\xff"


@pytest.mark.parametrize("line", [b"", b"not json", b"[1, 2]", b"\xff\xfe", b'"text"'])
def test_decode_rejects_non_objects(line: bytes) -> None:
    with pytest.raises(proto.MessageError):
        proto.decode(line)


def test_replies() -> None:
    assert proto.ok_reply(1, {"a": 1}) == {"id": 1, "ok": True, "result": {"a": 1}}
    error = proto.error_reply(None, "os_error", "gone", errno=2)
    assert error == {"id": None, "ok": False, "error": {"kind": "os_error", "message": "gone", "errno": 2}}


def test_hello_shape() -> None:
    hello = proto.hello("1.0", "3.11.2", 2, "/opt/vmpool")
    assert proto.check_hello(json.loads(proto.encode(dict(hello)))) == hello
    assert hello["protocol"] == proto.PROTOCOL_VERSION == 2 and hello["guest_dir"] == "/opt/vmpool"
    with pytest.raises(proto.MessageError):
        proto.check_hello({"op": "hello", "protocol": "1"})
    with pytest.raises(proto.MessageError):
        proto.check_hello({"id": 1, "ok": True})
    without_dir = {key: value for key, value in hello.items() if key != "guest_dir"}
    with pytest.raises(proto.MessageError, match="guest_dir"):
        proto.check_hello(without_dir)


def test_hello_of_another_version_is_returned_for_the_host_to_refuse() -> None:
    # a v1 agent's hello has no guest_dir: the host must still learn its version to name it
    old = {"id": 0, "op": "hello", "protocol": 1, "agent_version": "0.1.0", "python": "3.11.2", "pid": 2}
    assert proto.check_hello(old)["protocol"] == 1


def test_events_belong_to_a_request() -> None:
    message = proto.event(7, "stdout", data_b64=proto.b64encode(b"x"))
    assert message == {"id": 7, "event": "stdout", "data_b64": "eA=="}
    assert "ok" not in message and proto.decode(proto.encode(message)) == message


def test_ops_are_either_serial_or_concurrent() -> None:
    assert not set(proto.SERIAL_OPS) & set(proto.PROCESS_OPS)
    assert set(proto.OPS) == {"ping"} | set(proto.SERIAL_OPS) | set(proto.PROCESS_OPS)
    assert "run_program" in proto.SERIAL_OPS and "ping" not in proto.SERIAL_OPS
    assert proto.CHUNK_BYTES * 4 // 3 + 1024 < proto.MAX_LINE_BYTES  # an output event fits a line


def test_check_limits() -> None:
    checked = proto.check_limits(LIMITS)
    assert checked["cpu_time_s"] == 2.0 and isinstance(checked["cpu_time_s"], float)
    assert isinstance(checked["memory_mb"], int)
    for key, bad in [("memory_mb", 0), ("wall_time_s", -1), ("max_processes", "4"), ("max_output_bytes", True)]:
        with pytest.raises(proto.MessageError, match=key):
            proto.check_limits(dict(LIMITS, **{key: bad}))
    with pytest.raises(proto.MessageError):
        proto.check_limits({k: v for k, v in LIMITS.items() if k != "memory_mb"})
    with pytest.raises(proto.MessageError):
        proto.check_limits(None)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), float("-inf")])
def test_check_limits_refuses_non_finite_values(bad: float) -> None:
    # json.loads accepts Infinity and NaN; no deadline or rlimit can use them
    for key in ("wall_time_s", "cpu_time_s", "max_output_bytes"):
        with pytest.raises(proto.MessageError, match=key):
            proto.check_limits(dict(LIMITS, **{key: bad}))


def test_field() -> None:
    assert proto.field({"code": "x"}, "code", str) == "x"
    messages: list[dict[str, object]] = [{}, {"code": 1}, {"code": None}]
    for message in messages:
        with pytest.raises(proto.MessageError, match="code"):
            proto.field(message, "code", str)
    with pytest.raises(proto.MessageError):
        proto.field({"n": True}, "n", int)


def test_b64decode_rejects_garbage() -> None:
    with pytest.raises(proto.MessageError):
        proto.b64decode("not base64!")


def test_line_buffer_reassembles_chunks() -> None:
    buffer = proto.LineBuffer()
    for chunk in [b'{"a"', b':1}\n{"b":2}\n{"c"', b":3}"]:
        buffer.feed(chunk)
    assert buffer.next_line() == b'{"a":1}'
    assert buffer.next_line() == b'{"b":2}'
    assert buffer.next_line() is None and buffer.pending == len(b'{"c":3}')
    buffer.feed(b"\n")
    assert buffer.next_line() == b'{"c":3}'


def test_line_buffer_skips_over_long_lines_once() -> None:
    buffer = proto.LineBuffer(max_line=10)
    buffer.feed(b"x" * 15)
    with pytest.raises(proto.MessageError):
        buffer.next_line()
    buffer.feed(b"y" * 20 + b"\nok\n")
    assert buffer.next_line() == b"ok"  # the rest of the long line is dropped silently
    buffer.feed(b"z" * 11 + b"\nfine\n")  # a complete over-long line
    with pytest.raises(proto.MessageError):
        buffer.next_line()
    assert buffer.next_line() == b"fine"
    assert buffer.next_line() is None


def test_encode_refuses_oversized_messages() -> None:
    with pytest.raises(proto.MessageError):
        proto.encode({"data": "x" * proto.MAX_LINE_BYTES})
