"""lpm_trie: longest-prefix match with the kernel's semantics, checked against a brute-force
model on random IPv4 and IPv6 tables (per call, batch, after deletes), plus the errors."""
from __future__ import annotations

import ipaddress
import random

import pytest

import shmrcu
from shmrcu.errors import InvalidMapSpec, UnsupportedOperation


def _model_lookup(prefixes: dict, addr: int, bits: int):
    best = None
    for (net, plen), v in prefixes.items():
        if plen == 0 or addr >> (bits - plen) == net >> (bits - plen):
            if best is None or plen > best[0]:
                best = (plen, v)
    return None if best is None else best[1]


@pytest.mark.parametrize("bits,n_prefixes,n_lookups", [(32, 1500, 4000), (128, 300, 1500)])
def test_longest_prefix_match_against_a_model(runtime, bits, n_prefixes, n_lookups):
    np = pytest.importorskip("numpy")
    rnd = random.Random(bits)
    nbytes = bits // 8
    m = runtime.create_map("lpm_trie", key=f"{nbytes}s", value="QQ", max_entries=2 * n_prefixes)
    model: dict = {}
    lengths = [0, 8, 12, 16, 20, 24, 28, bits] if bits == 32 else [0, 16, 32, 48, 64, 96, 128]
    while len(model) < n_prefixes:
        plen = rnd.choice(lengths + [rnd.randrange(bits + 1)])
        net = rnd.getrandbits(bits) >> (bits - plen) << (bits - plen) if plen else 0
        v = rnd.getrandbits(40)
        model[(net, plen)] = (v, plen)
        m[(plen, net.to_bytes(nbytes, "big"))] = (v, plen)
    nets = list(model)

    def probe_addrs():
        out = []
        for _ in range(n_lookups):
            net, plen = rnd.choice(nets)
            host = rnd.getrandbits(bits - plen) if plen < bits else 0
            out.append(net | host if rnd.random() < 0.8 else rnd.getrandbits(bits))
        return out

    for phase in ("full", "after deletes"):
        addrs = probe_addrs()
        for a in addrs:
            want = _model_lookup(model, a, bits)
            got = m.get(a)
            assert got == want, (ipaddress.ip_address(a), got, want)
        packed = b"".join(a.to_bytes(nbytes, "big") for a in addrs)
        found = np.zeros(len(addrs), dtype=bool)
        out = m.lookup_batch(packed, default=(0, 999), found=found)
        vals = np.frombuffer(bytes(out), dtype=np.uint64).reshape(-1, 2)
        for i, a in enumerate(addrs):
            want = _model_lookup(model, a, bits)
            assert bool(found[i]) == (want is not None)
            assert tuple(int(x) for x in vals[i]) == (want if want is not None else (0, 999))
        for key in rnd.sample(nets, len(nets) // 2):    # delete half, then check again
            del m[(key[1], key[0].to_bytes(nbytes, "big"))]
            del model[key]
        nets = list(model)
    assert len(m) == len(model)
    assert sorted(m.keys()) == sorted(f"{ipaddress.ip_address(n.to_bytes(nbytes, 'big'))}/{p}"
                                      for n, p in model)


def test_lpm_api_and_errors(runtime):
    m = runtime.create_map("lpm_trie", key="4s", value="Q", max_entries=16, name="routes")
    m["10.0.0.0/8"] = 8
    m[ipaddress.ip_network("10.1.0.0/16")] = 16
    m[(24, b"\x0a\x01\x02\x00")] = 24
    assert m["10.1.2.3"] == 24 and m[ipaddress.ip_address("10.1.9.9")] == 16 and m[0x0a090909] == 8
    assert m.longest_prefix("10.1.2.200") == ("10.1.2.0/24", 24)
    assert "10.200.0.1" in m and "11.0.0.1" not in m and m.get("11.0.0.1", -1) == -1
    with pytest.raises(KeyError):
        m["11.0.0.1"]
    with pytest.raises(ValueError, match="host bits"):
        m["10.0.0.1/8"] = 1
    with pytest.raises(ValueError):
        m["10.0.0.0/33"] = 1
    with pytest.raises(TypeError, match="needs its length"):
        m["10.0.0.0"] = 1
    with pytest.raises(TypeError, match="IPv6"):
        m["2001:db8::/32"] = 1
    with pytest.raises(TypeError):
        m.get(b"\x01\x02\x03")                           # 3 bytes for a 4-byte map
    with pytest.raises(KeyError):
        del m["12.0.0.0/8"]
    with pytest.raises(UnsupportedOperation):
        m.add("10.0.0.0/8", 1)
    for bad_key in ("I", "QQ", "17s"):
        with pytest.raises(InvalidMapSpec, match="lpm_trie keys are addresses"):
            runtime.create_map("lpm_trie", key=bad_key, value="Q", max_entries=4)
    other = shmrcu.Runtime.attach(runtime.name)       # any attached process, by name
    try:
        with other.reader() as r:
            assert other.map("routes").lookup("10.1.2.3", r) == 24
    finally:
        other.close()
