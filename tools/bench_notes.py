"""The history and notes ``make bench`` renders into docs/benchmarks.md (tools/bench_report.py):
what each pass of the hot-path work changed, and what was measured and not kept."""

from __future__ import annotations

# Measured once, before and after the hot-path work, with this tool (each pair in one run).
HISTORY = [
    "## Hot-path work (Encrypt, software backend, ratio to the ceiling)",
    "",
    "| version | ratio | what changed |",
    "|---|---|---|",
    "| first hot path (2026-11-23) | 0.20 | stdlib json, audit line through `logging` with "
    "`dataclasses.asdict`, `strptime` for X-Amz-Date, a Prometheus label lookup per "
    "observation, an aiohttp middleware |",
    "| after profiling (cProfile under wrk) | 0.34 | orjson; audit lines built by hand and "
    "written with one `os.write` on an O_APPEND file; a hand-written X-Amz-Date parser; cached "
    "metric children; no middleware; no timer when the body has already arrived |",
    "| issue 15 (2026-11-29 06:28) | 0.24 → 0.37 | pybase64 (strict, canonical only); duplicate "
    "JSON members found without a second parse; no deadline timer for a backend that does not "
    "wait; one head timer per connection, not per request; the strict Authorization parse "
    "cached per credential and day; the audit timestamp formatted once a second; XKS POSTs past "
    "the router; `gc.freeze()` after start-up |",
    "| issue 15, second pass (2026-11-29 10:24) | 0.40 | request histograms as plain counters "
    "behind a collector (prometheus-client's own with `--workers`); `xks_requests_in_flight` "
    "read from the endpoint's count, not a locked gauge updated twice per request; the request "
    "metadata built once (the audit record takes the validated request's); no exception object "
    "built per request; a body that has arrived read without a coroutine; the audit "
    "timestamp's milliseconds from a table |",
    "| issue 15, third pass (2026-11-29 13:29) | 0.49 | XKS requests answered inside "
    "`data_received` when their "
    "connection is idle and their body has arrived (web/inline.py): no `start()` task wake-up, "
    "no handler task, no aiohttp Request or Response, the answer's bytes written to the "
    "transport at once, and a task only for an endpoint that waits; hot-path value types as "
    "NamedTuples instead of frozen dataclasses |",
    "| issue 15, fourth pass (2026-11-29 17:01, quick run) | 0.57 (the proxy before it 0.57 in the"
    " same run: within the noise end to end) | the software backend uses a key version already "
    "unsealed without a coroutine of its own (since an HSM KEK's unwrap moved off the loop, every "
    "request awaited the cache's `load`, and the backend stage had doubled: "
    "`SoftwareBackend.encrypt` 9.2 → 15.4 µs, `decrypt` 6.6 → 8.6 µs in process); `seal` and "
    "`unseal` take the cipher, and a ciphertext's metadata is decoded once. In process, "
    "interleaved (load average 5-9): encrypt 32.1 / 28.6 / 38.1 → 22.7 / 17.7 / 24.2 µs, decrypt "
    "23.0 / 31.0 / 30.3 → 16.6 / 24.8 / 22.4 µs |",
    "| the run above | ISSUE15 | no change to the software backend's request path since the fourth"
    " pass (the fifth pass made PKCS#11's default `\"auto\"` and the generator's waits precise); "
    "full runs on this machine the same day gave 0.49 (13:29), 0.49 (18:12) and 0.45 (18:39), the "
    "minimal handler 0.57, 0.50 and 0.48 in the same runs: the spread between runs to read the "
    "rows above against |",
    "",
    "The last row is the run above; the other rows are from earlier runs. Measured and not kept:",
    "",
    "- uvloop, measured again: its TLS failure had a cause, not a race. uvloop starts reading "
    "a connection right after `connection_made` even when the protocol paused it there, so the "
    "ClientHello reached the plain protocol before `start_tls` took over (and libuv resets "
    "signal dispositions in the workers it spawns, so a SIGUSR1 during start-up killed them). "
    "A rework fixing both (the listener hands each accepted socket to "
    "`connect_accepted_socket` with the TLS context current then; workers spawned with "
    "`subprocess.Popen`) passed the transport, lifecycle and rolling-restart tests on both "
    "loops, but showed no gain for the proxy in interleaved runs, CPU per request asyncio → "
    "uvloop: before the inline path (load average 11-13) Encrypt 459 → 448 µs and "
    "GetHealthStatus 336 → 393 µs, while the bare endpoint gained 10-20 %; with the inline "
    "path (load average 3-5, 4 rounds of 4 s) Encrypt 387 → 374 µs and GetHealthStatus 239 → "
    "255 µs. Not merged; the standard loop stays.",
    "- `hmac.digest` for the string to sign (the HMAC row above): faster in one run, slower "
    "in two; no consistent gain, so `hmac.new` stays.",
    "- Audit lines of one event-loop iteration in one `write(2)` (the audit-batching row "
    "above): a few µs per line when four lines share an iteration, nothing when one does (an "
    "idle-ish loop, the usual case below saturation), which is under 1 % of a request and "
    "below this machine's noise. The price would be the audit guarantee: the lines would be "
    "written after their answers, so a crash would lose the lines of requests already "
    'answered, and `on_failure = "refuse"` needs each line written before its answer anyway. '
    "Not adopted; every line is still written before its answer.",
    "- The XKS listener on aiohttp's low-level `web.Server`: XKS POSTs already skip the "
    "Application (router, match info, middleware chain; the first pass). What the Application "
    "still costs such a request is building a `web.Request` rather than a `BaseRequest` and a "
    "prepare hook that returns at once, under 1 % of the samples of a py-spy profile under "
    "load; moving the listener would re-home /ping, readiness, the runtime's `cleanup_ctx` and "
    "the drain for that. Not done: the third pass skips more than the low-level server would "
    "(the request and handler tasks, Request and Response) for the requests that matter, and "
    "leaves every other request on aiohttp's path.",
    "- Metric updates batched per loop iteration: deferring a prometheus-client observation "
    "does not make it cheaper; plain counters (above) do.",
    "- Garbage-collector thresholds: with the collector switched off altogether after "
    "start-up (the most any threshold could give), Encrypt's CPU per request did not move "
    "beyond the noise (643 against 629 µs, one interleaved quick run): after `gc.freeze()` the "
    "young generations hold only what requests allocate. The defaults stay.",
    "",
]


# Issue 15's PKCS#11 item: what was measured before and after, each pair in one interleaved run
# (scratch A/B on a machine shared with other work, load average 11-15 on 2 cores).
PKCS11_NOTES = [
    "Where a PKCS#11 request's time went before these changes (Decrypt under wrk, SoftHSM2): "
    "`perf` put 62 % of the process's CPU in the interpreter, 15 % in the kernel, 9 % in libc, "
    "4 % in libcrypto and 2.4 % in SoftHSM itself; py-spy put 20 % of the event-loop thread's "
    "samples in `ThreadPoolExecutor.submit` (the queue put that wakes a thread, which preempts "
    "the loop on the pinned core) and about as much in the threads waiting for the GIL, against "
    "2.5 % in `C_Decrypt` itself; strace counted 54 futex calls and two self-pipe writes per "
    "request. The thread hop, not the token, was the largest cost after the HTTP request path.",
    "",
    "Kept:",
    "",
    "- Calls on plain daemon threads reading a `SimpleQueue`, each outcome back through "
    "`call_soon_threadsafe` together with giving the session back (was: a `concurrent.futures` "
    "future, `wrap_future`, and a second `call_soon_threadsafe` for the session); and finished "
    "calls wake the event loop once per batch, not once per call. In process "
    "(`backend.encrypt`/`decrypt` from 16 tasks, 5 interleaved rounds, load average 6): "
    "executor 356 / 363 µs per call, plain threads 267 / 297, batched wake-ups 256 / 260 "
    "(Encrypt / Decrypt).",
    "- The same through the proxy under wrk, CPU per request before → after, four interleaved "
    "runs at load averages 6-15: Decrypt 889 → 765, 1058 → 912, 899 → 865, 1040 → 849 µs; "
    "Encrypt 941 → 824, 924 → 767, 1024 → 1053, 749 → 848 µs (the software proxy: 500-670 "
    "µs). On this busy machine one server's rounds spread by up to 40 %, so only Decrypt's gain "
    "is consistent here; the idle-machine `make bench` decides.",
    "- `calls_on_event_loop = true` (then an option, default false; for an in-process module "
    'such as SoftHSM2, never a network HSM; since 2026-11-29 18:10 the default `"auto"` picks '
    "it for SoftHSM2): no hop at all. In process it halves the backend's cost per call "
    "(Decrypt 353 → 199 µs, Encrypt 385 → 205 µs, 16 tasks, one interleaved run). Through the "
    "proxy on the busy machine it did not show (two interleaved runs): Encrypt 872 and 892 "
    "µs per request against 767 and 848 with threads, Decrypt 1149 and 847 against 912 and "
    "849, at under half the req/s, as for the single-threaded software proxy in the same runs "
    "(the scheduler gives a one-thread process less of a shared core than one with runnable "
    "threads; probably why its requests cost more here). Kept as an option, default off, "
    "measured above next to the threads; the idle-machine `make bench` then showed the gain "
    "(Decrypt 0.61 of the software backend on the loop, 0.38 on threads).",
    '- The default `calls_on_event_loop = "auto"` (2026-11-29 18:10): the calls run on the '
    "event loop when the module says it is SoftHSM2 (`C_GetInfo`: manufacturer `SoftHSM`, "
    "version 2) and no fault delay is configured, on call threads for every other module; "
    'under `"auto"` one call on the loop slower than `event_loop_call_limit_ms` (10 ms; a '
    "4 KiB AES-GCM call on SoftHSM2 takes 0.13 ms median, 0.35 ms p99, in process) moves that "
    "backend to call threads until restart, with a warning and "
    "`xks_pkcs11_calls_on_event_loop` going to 0. The table above measures it as the "
    "default.",
    "",
    "Where the thread path's extra CPU goes (second pass): py-spy put 18 % of the event-loop "
    "thread's samples in `sem_post`, the job queue waking a call thread, which preempts the "
    "loop on its core while the loop still holds the GIL; through the proxy 5.2-5.5 context "
    "switches per request on threads against 0.2 with `calls_on_event_loop`. The call threads "
    "use about what the same work costs on the loop (230-260 µs per request); the rest, "
    "about 100 µs, is on the loop thread (505-570 µs per request against the software "
    "proxy's 400-510 in the same runs): the hop, the future and the suspended request's task "
    "and deadline timer. python-pkcs11 makes three module calls per operation (a size query "
    "first), and its Cython wrapper takes the GIL once more after each call to look for a "
    "Python error. Interleaved A/B, in process (8 sessions, 16 tasks, the loop busy 300 µs per "
    "request, one core, 7-9 rounds) and through the proxy (`wrk`, 5-8 rounds of 3 s), load "
    "average 6-9, all measured and not kept:",
    "",
    "- Call threads under `SCHED_BATCH` (no wake-up preemption): in process context switches "
    "per call 2.3 → 1.0 and CPU per call Decrypt 741 → 688 µs, Encrypt 682 → 652 µs (three "
    "more runs, with other changes, alike); through the proxy context switches 5.2 → 4.2 per "
    "request but CPU per request rose: Decrypt 735 → 803 µs, Encrypt 812 → 971 µs, with fewer "
    "req/s. The proxy is the measure.",
    "- AES-GCM through two direct calls (ctypes on the module's function list: `C_*Init` and "
    "one `C_Encrypt`/`C_Decrypt` with the output room known, no size query; SoftHSM2 asks "
    "for the whole input as room for a decrypt, not the plaintext's length): in process with "
    "`calls_on_event_loop` Decrypt 555 → 499, 543 → 496, 488 → 474 µs and Encrypt 593 → 551, "
    "516 → 523 µs; on threads Decrypt 650 → 663, 593 → 614 µs, Encrypt 775 → 727, 666 → 634 "
    "µs; through the proxy (with `SCHED_BATCH`) Decrypt 797 → 813 and 716 → 727 µs on threads, "
    "738 → 759 and 734 → 786 µs on the loop. Within the noise, for a second code path beside "
    "python-pkcs11.",
    "- `sys.setswitchinterval(0.02)` (default 5 ms; process-wide): in process Decrypt 673 → 664, "
    "Encrypt 646 → 595 µs alone, 637 → 643 and 582 → 609 µs on top of `SCHED_BATCH`: no "
    "consistent gain for a process-wide side effect.",
    "- Fewer call threads (1 or 2 instead of one per session): 1.2 context switches per call "
    "instead of 2.1, CPU within the noise (645 and 626 against 644 and 704 µs), and a network "
    "HSM needs one thread per session in flight.",
    "",
    "So the thread path stays above the same calls on the loop (in process by 100-150 µs per "
    "call; in the idle-machine `make bench` runs by 200-360 µs per Decrypt), and cannot reach 0.6 "
    "of the software backend on one core: that allows 341 / 0.6 = 568 µs per Decrypt, and the "
    "calls on the loop alone cost 550. Calls on the event loop are the way there for an "
    'in-process module, hence the default `"auto"` above.',
    "",
    "Measured and not kept:",
    "",
    "- A session-object copy of each key (`C_CopyObject` with CKA_TOKEN false): SoftHSM2 "
    "reads the token's generation file and the key's object file under `fcntl` locks on every "
    "`C_EncryptInit`/`C_DecryptInit` of a token object (strace: 2.5 opens and 7.6 `fcntl` per "
    "request), and a raw 4 KiB AES-GCM decrypt costs 96-111 µs on the token object against "
    "29-52 µs on a session copy (in process, two runs). Not adopted: a copy outlives its token "
    "object, so a destroyed key or a lost token would go on decrypting until re-checked "
    "(issue 9's rule that a lost token answers InternalException from the first request), and "
    "HSMs may refuse the copy (CKA_COPYABLE).",
    "- Decrypt slower than Encrypt: not consistent. Decrypt's CPU per request was below "
    "Encrypt's in one run (765 against 824 µs) and above it in another (912 against 767), and "
    "the software proxy's Decrypt costs more than its Encrypt too (a larger request body).",
    "",
]


# Issue 15's latency item: what lagged the proxy's loop at 1,800 req/s over TLS, measured on a
# shared machine at load averages of 6-10 on 2 cores (so CPU time, profile shares, object counts
# and A/B pairs within one run, not absolute latencies).
LATENCY_NOTES = [
    "What lagged the loop at 1,800 req/s over TLS (the 13:29 run: p90 1.4 ms but p99 78.5 ms, "
    "the proxy's own p99 0.5 ms, its loop lag p99 14.6 ms), measured on this machine shared "
    "with other work (load average 2-10):",
    "",
    "- Little slack: over TLS the proxy spent 451-483 µs of CPU per request at 1,800 req/s "
    "(six runs, loaded machine; 328 µs over plain HTTP on the idle one), 81-87 % of its core, "
    "so "
    "anything else on that core builds a queue the loop is slow to work off. Two interleaved "
    "pairs at 1,800 req/s while the load average fell from 5 to 2: p99 989 and 169 ms with "
    "connections opened first against 179 and 97 ms opened as needed, the proxy's loop-lag "
    "samples over 10 ms 80, 23 against 38, 9 (of about 150 each), ordered by the machine's "
    "load, not by the variant; the proxy's own p99 from first byte 0.5-1.5 ms throughout. "
    "One warm run at a quiet moment (load average 1, 15 s): p50 1.04, p99 11.7, p99.9 22.9, "
    "max 26.8 ms, no error; the proxy 433 µs per request (78 % of its core), its own p99 0.5 "
    "ms, loop lag p99 13.6 ms (3 samples over 10 ms), 4 young collections (1.8 ms); the "
    "generator 46 % of its core, send lag p99 1.5 ms (its cold pair ran after the load rose "
    "again: no pair). Steady state with warm connections is far better than the 13:29 run "
    "but still short of p99 ≤ 5 ms, p99.9 ≤ 20 ms; `make bench` on an idle machine decides.",
    "- The start of each run. The generator opened connections as requests needed them, and "
    "every request due during a handshake found none idle and opened another, so a run began "
    "with up to 64 TLS handshakes on the proxy's core at once, at 1.4-2.2 ms of proxy CPU "
    "each (64 at a time, three rounds; 54 % of it in OpenSSL's handshake, the rest asyncio's "
    "TLS layer and aiohttp's per-connection set-up): about 100 ms in which no request moved, "
    "on a core with a fifth of it to spare. The generator's own 64 client handshakes ran on "
    "its loop at the same moment (its send lag p99.9 33.8 ms, max 41 ms in the 13:29 run). "
    "Measured by due time at 500 req/s, two interleaved pairs: the worst request of the first "
    "half second waited 901 and 1,170 ms opening connections as needed against 133 and 119 "
    "ms with them open before; the generator's send lag p99 160 and 244 ms against 19 and "
    "16 ms. Kept: the generator opens its connections before the first request "
    "(`--no-warm-up` measures the old start), so a run measures the steady state.",
    "- Failed handshakes under overload. A client that gives up mid-handshake (as every client "
    "that times out does) left its connection in a reference cycle (the exception's traceback "
    "holds `start_tls`'s frame, which holds the future holding the exception) with asyncio's "
    "256 KiB TLS read buffer, until a full collection; one that reset the connection also "
    "stayed in the drain registry for good. After 5 s at 2,500 req/s with a 250 ms timeout "
    "(fresh proxy each): 35,582 objects of garbage, 881 connections with their buffers, RSS "
    "384 MiB, before; 755 objects (asyncio's own small transport cycles), none, 116 MiB, "
    "after. Overloaded runs before the change showed full collections of 0.3-2.5 s. Kept: "
    "the handshake's exception drops its traceback and the connection leaves the registry "
    "(tests/test_tls_handshake_failures.py).",
    "- In steady state (600 req/s over TLS, py-spy `--idle`, 12 s): 44 % of the proxy's samples "
    "in the XKS request (38 % the inline path's answer), 13 % in asyncio's pure-Python TLS "
    "layer (reading 5 %, writing 8 %), under 1 % in handshakes, 47 % idle; no timer, scrape "
    "or collection stood out. At 1,800 req/s over TLS (six runs of 15 s, loaded machine): "
    "3-5 young-generation collections per run, 1.6-3.3 ms in all, and at most one "
    "middle-generation one of 2-4.4 ms; no full collection (nor in the idle-machine run at "
    "any rate). The collector is not what lags the loop.",
    "- The generator's timers. `epoll_wait` counts its timeout in whole milliseconds and "
    "Python's selectors round it up, so each request left up to 1 ms after its due time, and "
    "latency is measured from the due time. Kept: the generator's loop waits in `select(2)` "
    "on the epoll descriptor, which keeps microseconds (xks_proxy/loadtest/precise_loop.py). "
    "Two interleaved pairs against one TLS proxy, machine otherwise idle (load average "
    "0.3-0.9): at 450 req/s send lag p50 0.66, 0.64 → 0.22, 0.22 ms and p90 1.17, 1.17 → "
    "0.47, 0.50 ms, but p99 1.83, 1.92 → 1.73, 1.96 ms (the tail is the generator's own work "
    "on answers, not epoll); the client's p50 2.17, 2.11 → 1.77, 1.82 ms, its p99 unchanged "
    "(5.6-6.2 ms); generator CPU per request 597, 581 → 660, 656 µs (+11 %, under 30 % of "
    "its core). At 1,800 req/s send lag p50 0.33, 0.36 → 0.21, 0.19 ms, the p99s within the "
    "machine's noise. It pays in accuracy at the median; the tail is unchanged, so a "
    "generator sending over 1 ms late at p99 is still flagged at low rates.",
    "",
    "Measured and not kept:",
    "",
    "- TLS records read into a buffer the protocol owns (asyncio's `BufferedProtocol` path) "
    "instead of `SSLObject.read(256 KiB)`, which allocates 256 KiB per call: one 5.6 KB "
    "record written and read 20,000 times, 18.95, 19.15, 14.16 µs per record copied against "
    "22.74, 21.93, 14.32 µs buffered (three rounds): glibc serves the large allocation from "
    "its heap after the first. No change. asyncio's 256 KiB read size against 64 KiB and "
    "17 KiB, a fresh 6 KB record each time (20,000, three rounds): 10.8, 11.1, 9.2 against "
    "10.6, 10.4, 10.3 and 10.9, 10.8, 11.8 µs per record: no difference either.",
    "- uvloop over TLS (its Cython TLS layer; the `uvloop` branch, same tree on both loops), "
    "CPU per request at 1,500 req/s, two interleaved pairs on a machine running other tests: "
    "asyncio 593 and 629 µs against uvloop 565 and 594 µs (5 %), the clients' p99 set by "
    "the machine's load either way. A py-spy profile at that rate puts asyncio's own "
    "pure-Python TLS glue at about 3 % of the proxy's samples; the rest of the TLS cost is "
    "OpenSSL's work and the system calls, which any loop pays. Not pursued.",
    "- A `select(2)` event loop for the generator (microsecond timeouts; `epoll_wait` takes "
    "milliseconds and asyncio rounds each wait up, so requests leave up to 1 ms late, p99 about "
    "1 ms even at 20 % CPU): 686 and 657 µs of generator CPU per request against 482 and 450 "
    "with epoll (two interleaved pairs at 300 req/s), its Python-level descriptor sets rebuilt "
    "on every call. Not adopted.",
    "- Re-running a rate with more generator processes when the generator sends late at a low "
    "CPU share: on this machine the late sending is epoll's millisecond (above) and, in the "
    "tail, the generator's own start-up handshakes (now made before the run); more processes on "
    "the one generator core change neither. The rule stays: CPU share only.",
    "- One task and one `asyncio.timeout` per generator request replaced by a callback on the "
    "answer's future (and one deadline sweep): in isolation 46-53 µs per request with task and "
    "timeout, 9-14 µs as a callback (50,000 at once, three rounds, loaded machine), so at most "
    "about 15 % of the generator's 261 µs per request at 1,800 req/s, where it used 47 % of "
    "its core: not its limit. Not done.",
    "",
]
