"""The wire protocol (arena/sandbox/wire.py): every message kind survives its crossing, and a malformed one is refused
with a message that says what was expected."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from arena.sandbox import wire
from arena.sandbox.box import _ChildUnpickler

SHAPE = (1, 8, 8)
BATCH = np.zeros((2, *SHAPE), dtype=np.float32)


def from_sandbox(message: object) -> object:
    """``message`` as the arena reads what a sandbox sent: through the restricted unpickler."""
    return _ChildUnpickler(io.BytesIO(pickle.dumps(message))).load()


def same(a: object, b: object) -> bool:
    """Equal, arrays compared by value."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b) and a.dtype == b.dtype
    return a == b


@pytest.mark.parametrize(
    "request_",
    [
        wire.StartMatch({"spec": "as the attack may see it"}, {"reject": False}),
        wire.Batch(BATCH, np.array([1, 2]), None, 40),
        wire.Describe(),
        wire.Probs(BATCH),
        wire.Classify(BATCH, 3),
        wire.Gradient(BATCH),
        wire.Replay(BATCH, True, "forward"),
        wire.ModelCall("vjp", BATCH, np.zeros((2, 10), dtype=np.float32), 7),
        wire.QueryAnswer(np.full((2, 10), 0.1, dtype=np.float32), 2, 8),
        wire.QueryRefused("budget", "query budget exhausted"),
    ],
    ids=lambda request: type(request).__name__,
)
def test_what_the_arena_sends_reaches_the_sandbox_whole_and_typed(request_: tuple) -> None:
    assert same(pickle.loads(pickle.dumps(request_)), request_)


def test_what_a_sandbox_sends_is_plain_data_and_decodes_to_its_kind() -> None:
    for message in (
        wire.reply(3),
        wire.error("boom"),
        wire.service(wire.QUERY, BATCH),
        wire.service(wire.NOTICE, wire.LEAVE),
    ):
        assert same(wire.open_message(from_sandbox(message)), wire.Message(*message))
    assert from_sandbox(wire.READY) == wire.READY and from_sandbox(wire.setup_error("x"))[0] == wire.SETUP_ERROR
    assert wire.decode_notice(from_sandbox(wire.enter(4, "backward"))) == wire.Enter(4, "backward")
    assert wire.decode_notice(from_sandbox(wire.LEAVE)) is None
    report = (BATCH, True, "reject", "its reject returned garbage")
    assert same(wire.decode_fault_report(from_sandbox(report)), wire.FaultReport(*report))
    call = ("forward", BATCH, None, 5)
    assert same(wire.decode_model_call(from_sandbox(call), SHAPE, 10), wire.ModelCall(*call))
    x = torch.zeros(2, *SHAPE)
    assert np.array_equal(wire.decode_output(from_sandbox(wire.output(x + 1, x))), np.ones((2, *SHAPE)))
    with pytest.raises(wire.NotATensor, match="returned list, not a torch.Tensor"):
        wire.decode_output(from_sandbox(wire.output([1], x)))


def test_what_a_host_answers_decodes_to_its_kind() -> None:
    assert wire.decode_described(from_sandbox({"reject": True})) == {"reject": True}
    probs = np.full((2, 10), 0.1, dtype=np.float32)
    assert np.array_equal(wire.decode_array(from_sandbox(probs), (2, 10), "a query"), probs)
    verdict = (np.zeros((3, 2), dtype=np.int64), np.zeros((3, 2), dtype=bool))
    assert same(wire.decode_verdict(from_sandbox(verdict), 3, 2), verdict)
    assert wire.decode_gradient(from_sandbox(0.5)) == 0.5 and wire.decode_gradient(float("nan")) is None


@pytest.mark.parametrize(
    ("decode", "garbage", "said"),
    [
        (wire.open_message, ["reply", 1], "unexpected message of type list"),
        (wire.open_message, ("reply", 1, 2), "unexpected message of type tuple"),
        (wire.decode_notice, ("enter", "many", "forward"), "malformed notice"),
        (wire.decode_fault_report, (BATCH, True, "backward", "?"), "malformed report"),
        (lambda m: wire.decode_model_call(m, SHAPE, 10), ("forward", BATCH[:, :, :4], None, 1), "malformed batch"),
        (lambda m: wire.decode_model_call(m, SHAPE, 10), ("vjp", BATCH, None, 1), "malformed output gradient"),
        (lambda m: wire.decode_model_call(m, SHAPE, 10), ("delete", BATCH, None, 1), "malformed request"),
        (wire.decode_output, ("tensor", [1.0]), "malformed reply to a batch"),
        (wire.decode_described, {"reject": "yes"}, "described its model with garbage"),
        (
            lambda m: wire.decode_array(m, (2, 10), "a query"),
            np.zeros((2, 9)),
            r"expected a finite array shaped \(2, 10\)",
        ),
        (lambda m: wire.decode_verdict(m, 1, 2), (np.zeros((1, 3)), np.zeros((1, 2))), "malformed predictions"),
        (lambda m: wire.decode_verdict(m, 1, 2), np.zeros((1, 2)), "malformed predictions"),
    ],
)
def test_a_malformed_message_is_refused_saying_what_was_expected(decode, garbage: object, said: str) -> None:  # noqa: ANN001
    with pytest.raises(wire.ProtocolError, match=said):
        decode(from_sandbox(garbage))


def test_a_notice_holding_arrays_is_refused_not_compared() -> None:
    with pytest.raises(wire.ProtocolError, match="malformed notice"):
        wire.decode_notice(from_sandbox((BATCH,)))
