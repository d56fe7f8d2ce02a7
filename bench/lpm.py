"""Longest-prefix match: shmrcu's lpm_trie against in-process peers, same table, same run.

    python bench/lpm.py            # needs pytricia and py-radix (pip install pytricia py-radix)

Table: 100,000 random IPv4 prefixes (lengths as in a routing table: mostly /24, /16-/23,
some /8-/15); 100,000 lookups of addresses inside random prefixes (90%) or random (10%).
Reports ns per lookup, median of 5 rounds [range]: per call (str addresses for every map;
also packed bytes for shmrcu), shmrcu's GIL-free batch, and the exact-match ceiling -- the
same addresses looked up in a plain hash map (per call and batch).  All answers are checked
against each other first.
"""
import os
import random
import socket
import statistics
import time

import shmrcu

N_PREFIXES = 100_000
N_LOOKUPS = 100_000
ROUNDS = 5


def table(rnd):
    out = {}
    while len(out) < N_PREFIXES:
        r = rnd.random()
        plen = 24 if r < 0.55 else rnd.randint(16, 23) if r < 0.9 else rnd.randint(8, 15)
        net = rnd.getrandbits(32) >> (32 - plen) << (32 - plen)
        out[(net, plen)] = len(out) + 1
    return out


def timed(fn, n):
    s = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter_ns()
        fn()
        s.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(s), min(s), max(s)


def main():
    import pytricia
    import radix
    rnd = random.Random(7)
    prefixes = table(rnd)
    nets = list(prefixes)
    addrs = []
    for _ in range(N_LOOKUPS):
        net, plen = rnd.choice(nets)
        addrs.append(net | rnd.getrandbits(32 - plen) if rnd.random() < 0.9 else rnd.getrandbits(32))
    texts = [socket.inet_ntoa(a.to_bytes(4, "big")) for a in addrs]
    raw = [a.to_bytes(4, "big") for a in addrs]
    packed = b"".join(raw)

    rt = shmrcu.Runtime.create(f"benchlpm{os.getpid()}")
    try:
        t0 = time.perf_counter()
        lpm = rt.create_map("lpm_trie", key="4s", value="Q", max_entries=N_PREFIXES)
        for (net, plen), v in prefixes.items():
            lpm[(plen, net.to_bytes(4, "big"))] = v
        load_s = time.perf_counter() - t0
        pt = pytricia.PyTricia(32)
        rx = radix.Radix()
        for (net, plen), v in prefixes.items():
            cidr = f"{socket.inet_ntoa(net.to_bytes(4, 'big'))}/{plen}"
            pt[cidr] = v
            rx.add(cidr).data["v"] = v
        exact = rt.create_map("hash", key="4s", value="Q", max_entries=N_LOOKUPS)
        for b in raw:
            exact[b] = 1

        # the answers agree
        out = lpm.lookup_batch(packed, default=0)
        got = [int.from_bytes(bytes(out[8 * i:8 * i + 8]), "little") for i in range(0, N_LOOKUPS, 997)]
        for j, i in enumerate(range(0, N_LOOKUPS, 997)):
            node = rx.search_best(texts[i])
            want = node.data["v"] if node else 0
            assert got[j] == want == (pt.get(texts[i]) or 0) == (lpm.get(texts[i]) or 0), texts[i]

        g, gb = lpm.get, lpm.get
        rows = [
            ("lpm_trie per call (str)", timed(lambda: [g(t) for t in texts], N_LOOKUPS)),
            ("lpm_trie per call (4 bytes)", timed(lambda: [gb(b) for b in raw], N_LOOKUPS)),
            ("lpm_trie lookup_batch", timed(lambda: lpm.lookup_batch(packed, out, default=0), N_LOOKUPS)),
            ("pytricia per call (str)", timed(lambda: [pt.get(t) for t in texts], N_LOOKUPS)),
            ("py-radix search_best (str)", timed(lambda: [rx.search_best(t) for t in texts], N_LOOKUPS)),
            ("exact-match hash per call (4 bytes)", timed(lambda: [exact.get(b) for b in raw], N_LOOKUPS)),
            ("exact-match hash lookup_batch", timed(lambda: exact.lookup_batch(packed), N_LOOKUPS)),
        ]
        lengths = len({p for _, p in prefixes})
        print(f"{N_PREFIXES} prefixes ({lengths} distinct lengths), loaded in {load_s:.2f} s; "
              f"{N_LOOKUPS} lookups")
        for label, (med, lo, hi) in rows:
            print(f"{label:38s} median {med:8.1f} ns/lookup  (range {lo:.1f}-{hi:.1f})")
    finally:
        rt.destroy()


if __name__ == "__main__":
    main()
