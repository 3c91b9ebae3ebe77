"""The benchmark harness of issue 6: `python -m bench` (see docs/benchmarks.md).

cli          flags, the run, the output files
suite        one model on one device: every configuration, back to back
fixtures     the trivial and heavy models (and the MNIST stand-in), cached
payloads     the workloads and their request bodies
server       a real uvicorn process on loopback: start-up, RSS, /metrics
load         the aiohttp generator: closed loop and open loop
wrk          closed-loop throughput runs with wrk
ceiling      the model called in process, no HTTP
analysis     ratios between configurations, and the targets
report       results.json, results.md, throughput_p99.png
naive_app    the naive baseline: the model called inside each request
stalls       `python -m bench.stalls`: how long each costly step stalls the event loop
"""
