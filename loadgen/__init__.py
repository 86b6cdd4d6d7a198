"""`loadgen` — an open-loop load generator for tap, and same-run benchmarks against baselines.

`python -m loadgen run SCENARIO` drives virtual users (real wallets, SIWE logins, Ed25519
session keys, a WebSocket each) at the arrival rates a scenario's stages ask for, measures every
request from its *intended* send time, follows every accepted bet to its confirmation, and
fails when a threshold breaks. `python -m loadgen bench` starts servers on loopback and finds
the highest sustained rate of tap and of its baselines in one run. See docs/benchmarks.md.

Where things are — three rooms:
- `generator/`: the load generator itself
  - scenario.py, schedule.py   what a run asks for; stages → intended send times (pure)
  - engine.py                  the open-loop dispatcher and the pool of client slots
  - vu.py, signer.py, market.py  virtual users, their keys and signing worker, the grid they read
  - h1.py                      the minimal HTTP/1.1 keep-alive client of the hot path
  - histogram.py, recorder.py  HDR-style histograms; per-route outcomes; confirmation tracking
  - thresholds.py, report.py   judging a run; the live line, the final table, report.json
  - runner.py                  one scenario run end to end
  - capacity.py, cpu.py        the rate search; CPU use of this process and of the servers
- `benches/`: what is measured with it — bench.py (the same-run benchmark), bench_* (the writer,
  the bet path in-process, pricing, Redis, the resolver, scale-out), killloop.py (the SIGKILL
  campaign), filldb.py (a large ledger for drills)
- `peers/`: what it talks to — targets.py (starting servers in subprocesses: the one seam to
  tap), servers.py (the bare and Quart baselines), naive.py (the one-commit-per-request peer)
"""
