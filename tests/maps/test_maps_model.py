"""Model-based tests: long seeded random op sequences against a Python dict.

Every operation must give the same result and raise the same error (class and
errno) as the model, including BPF flags, full maps and deleted-slot reuse."""
from __future__ import annotations

import errno
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import shmrcu
from shmrcu import maps
from shmrcu.errors import IndexOutOfRange, KeyExists, KeyNotFound, MapFull, UnsupportedOperation

U64 = 1 << 64


class DictModel:
    """BPF map semantics on a dict: what each op returns or raises (class, errno)."""

    def __init__(self, kind: str, max_entries: int, zero):
        self.kind, self.max, self.zero = kind, max_entries, zero
        self.d = {i: zero for i in range(max_entries)} if kind == "array" else {}

    def _index(self, k):
        if self.kind == "array" and not 0 <= k < self.max:
            raise IndexOutOfRange()
        return k

    def get(self, k):
        self._index(k)
        if k not in self.d:
            raise KeyNotFound(k)
        return self.d[k]

    def update(self, k, v, flags):
        self._index(k)
        present = k in self.d
        if flags == maps.NOEXIST and present:
            raise KeyExists()
        if flags == maps.EXIST and not present:
            raise KeyNotFound(k)
        if not present and len(self.d) >= self.max:
            raise MapFull()
        self.d[k] = v

    def delete(self, k):
        self._index(k)
        if self.kind == "array":
            raise UnsupportedOperation()
        if k not in self.d:
            raise KeyNotFound(k)
        del self.d[k]

    def add(self, k, delta):
        self._index(k)
        if k not in self.d:
            if len(self.d) >= self.max:
                raise MapFull()
            self.d[k] = self.zero
        old = self.d[k]
        if isinstance(old, tuple):
            new = tuple((a + b) % U64 for a, b in zip(old, delta))
        else:
            new = (old + delta) % U64
        self.d[k] = new
        return new


def outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:   # noqa: BLE001 - compared with the model's outcome
        return ("err", type(e).__name__, getattr(e, "errno", None))


KINDS = [
    # kind, key format, value format, key generator, value generator, zero
    ("hash", "I", "Q", lambda r: r.randrange(40), lambda r: r.randrange(U64), 0),
    ("hash", "Q", "QQ", lambda r: r.randrange(40) * 0x1_0000_0001,
     lambda r: (r.randrange(U64), r.randrange(100)), (0, 0)),
    ("hash", "12s", "Q", lambda r: bytes([r.randrange(40)]) + b"k" * 11, lambda r: r.randrange(1000), 0),
    ("array", "I", "Q", lambda r: r.randrange(36), lambda r: r.randrange(U64), 0),
    ("array", "I", "QQ", lambda r: r.randrange(36), lambda r: (r.randrange(9), r.randrange(9)), (0, 0)),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spec", KINDS, ids=lambda s: f"{s[0]}-{s[1]}-{s[2]}")
def test_random_sequence_matches_dict(runtime, spec, seed):
    kind, kf, vf, keygen, valgen, zero = spec
    max_entries = 32
    rnd = random.Random(seed * 7919 + len(kf))
    m = runtime.create_map(kind, key=None if kind == "array" else kf, value=vf, max_entries=max_entries)
    model = DictModel(kind, max_entries, zero)
    for step in range(4000):
        op = rnd.random()
        k = keygen(rnd)
        if op < 0.30:
            v, flags = valgen(rnd), rnd.choice([maps.ANY, maps.ANY, maps.NOEXIST, maps.EXIST])
            got, want = outcome(lambda: m.update(k, v, flags)), outcome(lambda: model.update(k, v, flags))
        elif op < 0.55:
            got, want = outcome(lambda: m[k]), outcome(lambda: model.get(k))
        elif op < 0.75:
            got, want = outcome(lambda: m.__delitem__(k)), outcome(lambda: model.delete(k))
        elif op < 0.85:
            delta = (rnd.randrange(5), rnd.randrange(5)) if isinstance(zero, tuple) else rnd.randrange(U64)
            got, want = outcome(lambda: m.add(k, delta)), outcome(lambda: model.add(k, delta))
        elif op < 0.95:
            got, want = ("ok", k in m), ("ok", k in model.d)
        elif op < 0.995:
            got, want = ("ok", sorted(m.items())), ("ok", sorted(model.d.items()))
        else:
            m.clear()
            model.d = {i: zero for i in range(max_entries)} if kind == "array" else {}
            got = want = None
        assert got == want, f"step {step}: op {op:.3f} key {k!r}"
        assert len(m) == len(model.d)
        if rnd.random() < 0.01:
            runtime.synchronize()        # let deleted slots become reusable now and then
    assert sorted(m.items()) == sorted(model.d.items())


def test_errors_carry_bpf_errno():
    assert KeyNotFound.errno == errno.ENOENT and KeyExists.errno == errno.EEXIST
    assert MapFull.errno == errno.E2BIG and IndexOutOfRange.errno == errno.E2BIG


class HashMachine(RuleBasedStateMachine):
    """Hypothesis: a small hash map against a dict, with grace periods interleaved."""

    def __init__(self):
        super().__init__()
        import itertools
        HashMachine._n = getattr(HashMachine, "_n", itertools.count())
        self.rt = shmrcu.Runtime.create(f"{HashMachine.prefix}h{next(HashMachine._n)}", max_workers=4)
        self.m = self.rt.create_map("hash", key="H", value="Q", max_entries=6)
        self.model = DictModel("hash", 6, 0)

    keys = st.integers(0, 12)

    @rule(k=keys, v=st.integers(0, U64 - 1), flags=st.sampled_from([0, 1, 2]))
    def update(self, k, v, flags):
        assert outcome(lambda: self.m.update(k, v, flags)) == outcome(lambda: self.model.update(k, v, flags))

    @rule(k=keys)
    def delete(self, k):
        assert outcome(lambda: self.m.__delitem__(k)) == outcome(lambda: self.model.delete(k))

    @rule(k=keys)
    def get(self, k):
        assert outcome(lambda: self.m[k]) == outcome(lambda: self.model.get(k))

    @rule(k=keys, d=st.integers(0, 10))
    def add(self, k, d):
        assert outcome(lambda: self.m.add(k, d)) == outcome(lambda: self.model.add(k, d))

    @rule()
    def grace_period(self):
        self.rt.synchronize()

    @invariant()
    def same_contents(self):
        assert sorted(self.m.items()) == sorted(self.model.d.items())
        assert len(self.m) == len(self.model.d)

    def teardown(self):
        self.rt.destroy()


@pytest.fixture
def hash_machine_prefix(rt_name):
    HashMachine.prefix = rt_name + "."
    yield


def test_hash_state_machine(hash_machine_prefix, rt_name):
    from hypothesis.stateful import run_state_machine_as_test
    run_state_machine_as_test(HashMachine, settings=settings(max_examples=40, stateful_step_count=40,
                                                             deadline=None))
