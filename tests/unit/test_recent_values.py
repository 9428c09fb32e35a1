"""RecentValues: bytes results held a moment for a reader on the replica that made them."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.runtime.recent import RecentValues

pytestmark = pytest.mark.anyio


async def test_only_bytes_are_held_and_the_first_reader_takes_the_object_itself() -> None:
    recent = RecentValues(100)
    value = bytes(10)
    assert recent.keep("a", value)
    assert not recent.keep("b", bytearray(10))  # mutable: a reader could change what another sees
    assert not recent.keep("c", {"x": 1}) and not recent.keep("d", "text")
    assert len(recent) == 1 and recent.nbytes == 10
    assert recent.take("a") is value  # no copy
    assert recent.take("a") is None  # a second reader reads the object store
    assert recent.take("missing") is None
    assert recent.taken == 1 and recent.nbytes == 0 and len(recent) == 0


async def test_oldest_values_go_first_beyond_max_bytes_and_a_larger_one_is_not_held() -> None:
    recent = RecentValues(25)
    for key in ("a", "b", "c"):
        recent.keep(key, bytes(10))
    assert recent.take("a") is None and recent.nbytes == 20  # "a" made room for "c"
    assert not recent.keep("huge", bytes(26))
    assert recent.take("b") is not None and recent.take("c") is not None
    recent.keep("d", bytes(10))
    recent.keep("d", bytes(5))  # kept again: replaced, counted once
    assert recent.nbytes == 5 and len(recent) == 1


async def test_a_value_nobody_reads_is_dropped_after_its_ttl() -> None:
    recent = RecentValues(100, ttl_s=0.05)
    recent.keep("a", bytes(10))
    recent.keep("b", bytes(10))
    assert recent.take("b") is not None  # taken: its timer is cancelled
    await asyncio.sleep(0.2)
    assert len(recent) == 0 and recent.nbytes == 0 and recent.take("a") is None
    recent.keep("c", bytes(3))
    recent.clear()
    assert len(recent) == 0 and recent.nbytes == 0


async def test_values_held_alone_never_make_room_and_wait_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value held alone has no copy in the object store: dropping it for room would make its
    reader's maker run again, so it goes only when taken or after HELD_ALONE_TTL_S."""
    import serve_app.runtime.recent as recent_module

    monkeypatch.setattr(recent_module, "HELD_ALONE_TTL_S", 0.3)
    recent = RecentValues(30, ttl_s=0.05)
    assert recent.keep("alone", bytes(20), alone=True)
    assert recent.keep("spare", bytes(10))
    assert recent.keep("newer", bytes(10))  # the spare value makes room, not the one held alone
    assert recent.take("spare") is None and recent.nbytes == 30 and recent.alone_nbytes == 20
    assert not recent.keep("too_much", bytes(11), alone=True)  # only the room of values held alone counts
    assert not recent.keep("spare2", bytes(11)) and recent.take("newer") is not None  # refused, dropping nothing
    await asyncio.sleep(0.15)
    assert len(recent) == 1  # a spare value would be gone by now; this one waits
    assert recent.take("alone") is not None and recent.alone_nbytes == 0 and recent.nbytes == 0
    recent.keep("late", bytes(5), alone=True)
    await asyncio.sleep(0.5)
    assert len(recent) == 0 and recent.alone_nbytes == 0  # its own, longer, time is up too


async def test_a_reference_held_alone_takes_no_room_and_comes_back_as_it_was_taken() -> None:
    from serve_app.runtime.recent import InStore

    recent = RecentValues(10)
    recent.keep_in_store("ref", handle := object())
    assert recent.nbytes == 0 and recent.keep("full", bytes(10))  # the object is in the store, not here
    taken = recent.take("ref")
    assert taken == InStore(handle) and recent.take("ref") is None
    recent.hold_again("ref", taken)  # its reader failed: held again for the retry
    recent.hold_again("value", recent.take("full"))
    assert recent.take("ref") == InStore(handle) and recent.alone_nbytes == 10 and recent.take("value") == bytes(10)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["keep", "keep_alone", "keep_in_store", "take", "hold_again", "clear"]),
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.integers(min_value=0, max_value=40),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_the_byte_counts_hold_under_any_sequence_of_calls(ops: list[tuple[str, str, int]]) -> None:
    """Whatever is kept, taken, held again or cleared: the counts are the sum of what is held,
    never over ``max_bytes``, and a value held alone is gone only when taken or cleared."""
    from serve_app.runtime.recent import InStore

    async def run() -> None:
        recent = RecentValues(64)
        model: dict[str, tuple[bytes | InStore, bool]] = {}  # key -> (what, held alone)
        taken: dict[str, bytes | InStore] = {}
        for op, key, size in ops:
            if op in ("keep", "keep_alone"):
                alone = op == "keep_alone"
                if recent.keep(key, bytes(size), alone=alone):
                    model[key] = (bytes(size), alone)
                else:
                    model.pop(key, None)  # kept again: the old value is let go either way
            elif op == "keep_in_store":
                recent.keep_in_store(key, size)
                model[key] = (InStore(size), True)
            elif op == "take":
                got = recent.take(key)
                assert got == (model.pop(key)[0] if key in model else None)
                if got is not None:
                    taken[key] = got
            elif op == "hold_again" and key in taken:
                again = taken.pop(key)
                if recent.hold_again(key, again):
                    model[key] = (again, True)
                else:
                    model.pop(key, None)
            else:
                recent.clear()
                model.clear()
            # Spare values may have made room: only those may be missing from the model's view.
            for k in [k for k, (_, alone) in model.items() if not alone]:
                if recent.take(k) is None:
                    del model[k]
                else:
                    recent.keep(k, model[k][0])
            held = {k: v for k, (v, _) in model.items()}
            assert {k for k, (_, alone) in model.items() if alone} <= set(recent._values)
            assert recent.nbytes == sum(len(v) for v in held.values() if isinstance(v, bytes)) <= 64
            assert recent.alone_nbytes == sum(
                len(v) for k, (v, alone) in model.items() if alone and isinstance(v, bytes)
            )
        recent.clear()

    asyncio.run(run())
