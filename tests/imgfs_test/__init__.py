"""The helpers the integration tests (tests/integration) and the benchmarks
(tools/bench-*) share: a real docker-registry on loopback, image writers
(plain, eStargz), fault and auth proxies, mounts, TAP output and named
cases.  Import it with tests/ on sys.path (meson sets PYTHONPATH; the
scripts add it themselves when run by hand)."""
