"""Load: many real Streamlit sessions against one hosted server on this machine.

    python bench/load.py                          (20 concurrent sessions, 200 come and go)
    python bench/load.py --threads 1 2 --arenas default 2 --think 1.0 0

Starts `streamlit run` in hosted mode on 127.0.0.1 and drives it with headless clients that speak
Streamlit's websocket protocol (tests/wsclient.py), so the sessions are real server sessions and the
clients cost almost no CPU. Four phases per onnxruntime thread setting:
  1. warm-up: one session opens every page once (models load, first runs compile);
  2. idle: N sessions open the home page and stay; RSS per idle session;
  3. concurrent: N sessions at once each step generation (the Generate page's "Sample one", a fragment
     rerun as the browser sends it) and switch pages (Attention, back to Generate), for a bounded
     number of rounds, pausing about `--think` seconds before each action as a person does (0 is a
     back-to-back stress test); latency of every step, errors (an exception on a page, a timeout, a
     dropped connection);
  4. churn: sessions come and go in waves of N (open Generate, one step, leave) until `--churn` have
     visited; RSS afterwards against RSS after the warm-up (a leak shows as growth).
Prints one table row per thread setting; the target is 20 sessions, 0 errors, p95 step <= 1.5 s, and
RSS back within 10 % after the churn.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

from common import ROOT

sys.path.insert(0, str(ROOT))
from tests.wsclient import Server, Session  # noqa: E402

PAGES = ["", "learn", "tokenizer", "generate", "compare", "attention", "models", "train", "scaling"]


async def warm_up(port: int) -> list[str]:
    s = Session(port)
    await s.connect()
    errors = []
    for page in PAGES:
        r = await s.rerun(page, timeout=120)
        errors += [f"{page or 'home'}: {e}" for e in r.errors]
    await s.close()
    return errors


async def visitor(port: int, rounds: int, steps: int, latencies: list, errors: list, think: float = 0.0,
                  switch: bool = True, seed: int = 0) -> None:
    """One person: opens the app, then per round opens Generate, clicks "Sample one" `steps` times and
    looks at the Attention page, pausing `think` seconds on average (0.5-1.5 x) before each action."""
    rng = random.Random(seed)
    s = Session(port)

    async def pause():
        if think:
            await asyncio.sleep(rng.uniform(0.5 * think, 1.5 * think))
    try:
        await s.connect()
        if switch:
            await s.rerun("")
            await pause()
        for _ in range(rounds):
            r = await s.rerun("generate")
            errors += r.errors
            button = r.buttons().get("Sample one")
            if button is None:
                errors.append("no 'Sample one' button on the Generate page")
                return
            for _ in range(steps):
                await pause()
                r = await s.click("generate", button)
                latencies.append(r.seconds)
                errors += r.errors
            if switch:
                await pause()
                r = await s.rerun("attention")
                errors += r.errors
    except (asyncio.TimeoutError, OSError, Exception) as e:   # a dropped or stuck session is an error
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        await s.close()


async def idle_sessions(port: int, n: int) -> list[Session]:
    sessions = [Session(port) for _ in range(n)]
    await asyncio.gather(*(s.connect() for s in sessions))
    await asyncio.gather(*(s.rerun("") for s in sessions))
    return sessions


def settle(server: Server, seconds: float = 20.0) -> float:
    """RSS once it stops falling (closed sessions are cleaned up a moment after they disconnect)."""
    best, end = server.rss_mb(), time.time() + seconds
    while time.time() < end:
        time.sleep(1.0)
        best = min(best, server.rss_mb())
    return best


def run_setting(threads: int, arenas: str, n: int, rounds: int, steps: int, churn: int, think: float) -> dict:
    from core.runtime import THREADS_ENV
    env = {THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)}
    if arenas != "default":
        env["MALLOC_ARENA_MAX"] = arenas
    print(f"-- onnxruntime threads {threads}, malloc arenas {arenas}: warm-up", flush=True)
    with Server(env=env) as server:
        warm_errors = asyncio.run(warm_up(server.port))
        base = settle(server, 5)

        async def idle_phase():
            sessions = await idle_sessions(server.port, n)
            rss = server.rss_mb()
            await asyncio.gather(*(s.close() for s in sessions))
            return rss
        idle_rss = asyncio.run(idle_phase())
        per_idle = (idle_rss - base) / n

        latencies, errors = [], list(warm_errors)
        t0 = time.perf_counter()

        print(f"   idle: {per_idle:.2f} MB per session; {n} concurrent sessions, think {think} s", flush=True)

        async def concurrent():
            await asyncio.gather(*(visitor(server.port, rounds, steps, latencies, errors, think, seed=i)
                                   for i in range(n)))
        asyncio.run(concurrent())
        wall = time.perf_counter() - t0
        before_churn = settle(server, 10)
        print(f"   {len(latencies)} steps in {wall:.0f} s; churn of {churn} sessions", flush=True)

        churn_lat, churn_err = [], []

        async def churn_phase():
            done = 0
            while done < churn:
                wave = min(n, churn - done)
                await asyncio.gather(*(visitor(server.port, 1, 1, churn_lat, churn_err, switch=False)
                                       for _ in range(wave)))
                done += wave
        asyncio.run(churn_phase())
        after = settle(server, 30)
    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan")
    return {"threads": threads, "arenas": arenas, "think": think, "sessions": n, "steps": len(lat), "errors": len(errors) + len(churn_err),
            "error_examples": (errors + churn_err)[:3], "p50": statistics.median(lat) if lat else float("nan"),
            "p95": p95, "max": lat[-1] if lat else float("nan"), "wall": wall, "base_rss": base,
            "per_idle_mb": per_idle, "before_churn": before_churn, "after_churn": after,
            "growth": (after - base) / base, "churned": churn}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="generate/attention rounds per session")
    ap.add_argument("--steps", type=int, default=5, help="generation steps per round")
    ap.add_argument("--churn", type=int, default=200, help="sessions that come and go after the load")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime intra-op threads")
    ap.add_argument("--arenas", nargs="+", default=["2"],
                    help="MALLOC_ARENA_MAX of the server ('default' leaves glibc's 8 per core)")
    ap.add_argument("--think", type=float, nargs="+", default=[1.0],
                    help="mean seconds a visitor pauses before each action (0: back-to-back, a stress test)")
    args = ap.parse_args()
    rows = [run_setting(t, a, args.sessions, args.rounds, args.steps, args.churn, k)
            for t in args.threads for a in args.arenas for k in args.think]
    print(f"\n{args.sessions} concurrent sessions, {args.rounds} x {args.steps} steps each, then {args.churn} "
          f"sessions come and go (hosted mode, exported/shakespeare-char)")
    print("| ort threads | malloc arenas | think s | steps | errors | p50 s | p95 s | max s | RSS base MB | "
          "MB per idle session | RSS after load MB | RSS after churn MB | growth |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} | {r['arenas']} | {r['think']} | {r['steps']} | {r['errors']} | {r['p50']:.3f} | "
              f"{r['p95']:.3f} | {r['max']:.3f} | {r['base_rss']:.0f} | {r['per_idle_mb']:.2f} | "
              f"{r['before_churn']:.0f} | {r['after_churn']:.0f} | {100 * r['growth']:+.1f} % |")
        if r["error_examples"]:
            print("   errors, e.g.:", r["error_examples"])
    ok = all(r["errors"] == 0 and r["growth"] <= 0.10 and (r["p95"] <= 1.5 or not r["think"]) for r in rows)
    print("target (0 errors, p95 <= 1.5 s with people's pauses, growth <= 10 %):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
