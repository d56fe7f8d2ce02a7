"""Test-only kernels: ``_torture`` (the rcutorture-style checks) and ``_bench`` (raw read-side loops).
Used by tests/ and bench/, never by the library itself."""
