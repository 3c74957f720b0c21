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
    "| issue 15, third pass | ISSUE15 | XKS requests answered inside `data_received` when their "
    "connection is idle and their body has arrived (web/inline.py): no `start()` task wake-up, "
    "no handler task, no aiohttp Request or Response, the answer's bytes written to the "
    "transport at once, and a task only for an endpoint that waits; hot-path value types as "
    "NamedTuples instead of frozen dataclasses |",
    "",
    "The third pass's row is the run above (with `--baseline`, the proxy before it too, "
    "interleaved in that run); the other rows are from earlier runs. Measured and not kept:",
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
    "- `calls_on_event_loop = true` (default false; for an in-process module such as SoftHSM2, "
    "never a network HSM): no hop at all. In process it halves the backend's cost per call "
    "(Decrypt 353 → 199 µs, Encrypt 385 → 205 µs, 16 tasks, one interleaved run). Through the "
    "proxy on the busy machine it did not show (two interleaved runs): Encrypt 872 and 892 "
    "µs per request against 767 and 848 with threads, Decrypt 1149 and 847 against 912 and "
    "849, at under half the req/s, as for the single-threaded software proxy in the same runs "
    "(the scheduler gives a one-thread process less of a shared core than one with runnable "
    "threads; probably why its requests cost more here). Kept as an option, default off, "
    "measured above "
    "next to the default.",
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
    "call; in the idle-machine `make bench` above by 360 µs per Decrypt), and cannot reach 0.6 "
    "of the software backend on one core: that allows 341 / 0.6 = 568 µs per Decrypt, and the "
    "calls on the loop alone cost 550. `calls_on_event_loop` is the way there for an "
    "in-process module.",
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
