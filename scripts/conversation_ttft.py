#!/usr/bin/env python3
"""TTFT of turns 1-8 of one chat: server-side conversation (`conversation.message`, one message
per turn) vs the client sending the whole history each time (`chat.completion.create`), and the
latter with --no-prefix-cache. Each mode runs on a fresh server (default model, greedy, same
answers). Usage: .venv/bin/python scripts/conversation_ttft.py [BINARY]
"""

import asyncio
import json
import pathlib
import subprocess
import sys
import time
import urllib.request

import websockets

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target/debug/stellarchat")
MODEL = str(ROOT / "weights/SmolLM2-135M-Instruct.Q4_1.gguf")
SYSTEM = ("You are a patient tutor. Answer in two or three plain sentences, define any term you use, "
          "and end with one short question that checks the student's understanding.")
QUESTIONS = ["What is a prime number?", "Is 91 prime?", "Why is 1 not prime?", "What is a composite number?",
             "How do I test if 97 is prime?", "What is the sieve of Eratosthenes?", "Are there infinitely many primes?",
             "What is a twin prime?"]
MAX_TOKENS = 48


def start(extra):
    proc = subprocess.Popen([BIN, "serve", "--port", "0", "--model", MODEL, *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    base = proc.stdout.readline().split()[-1]
    while True:
        try:
            urllib.request.urlopen(base + "/ready")
            return proc, base
        except Exception:
            time.sleep(0.1)


async def stream(ws, frame):
    """Sends a frame; returns (TTFT ms, text, usage)."""
    sent = time.perf_counter()
    await ws.send(json.dumps(frame))
    first, text = None, ""
    while True:
        f = json.loads(await ws.recv())
        if f["type"] == "chat.completion.chunk":
            piece = (f["chunk"]["choices"] or [{}])[0].get("delta", {}).get("content") or ""
            if piece and first is None:
                first = time.perf_counter()
            text += piece
        elif f["type"] == "chat.completion.done":
            return (first - sent) * 1000, text, f["usage"]
        else:
            raise RuntimeError(f)


async def run(mode, base):
    rows = []
    async with websockets.connect(base.replace("http", "ws") + "/v1/chat/ws", max_size=None) as ws:
        if mode == "conversation":
            await ws.send(json.dumps({"type": "conversation.create", "id": "c", "system": SYSTEM,
                                      "defaults": {"temperature": 0, "max_tokens": MAX_TOKENS}}))
            conv = json.loads(await ws.recv())["conversation_id"]
        history = [{"role": "system", "content": SYSTEM}]
        for i, q in enumerate(QUESTIONS):
            if mode == "conversation":
                frame = {"type": "conversation.message", "id": f"t{i}", "conversation_id": conv, "content": q}
            else:
                history.append({"role": "user", "content": q})
                frame = {"type": "chat.completion.create", "id": f"t{i}", "request": {
                    "model": "SmolLM2-135M-Instruct.Q4_1", "messages": history, "temperature": 0,
                    "max_tokens": MAX_TOKENS}}
            ttft, text, usage = await stream(ws, frame)
            if mode != "conversation":
                history.append({"role": "assistant", "content": text})
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            rows.append((ttft, usage["prompt_tokens"], cached, len(json.dumps(frame))))
    return rows


def main():
    results = {}
    for mode, extra in [("conversation", []), ("full history", []), ("full history, no prefix cache", ["--no-prefix-cache"])]:
        proc, base = start(extra)
        try:
            results[mode] = asyncio.run(run(mode, base))
        finally:
            proc.terminate()
            proc.wait()
    print(f"{'turn':>4} | " + " | ".join(f"{m}: TTFT ms / prompt / cached / frame bytes" for m in results))
    for turn in range(len(QUESTIONS)):
        cells = [f"{r[turn][0]:7.1f} / {r[turn][1]:4d} / {r[turn][2]:4d} / {r[turn][3]:5d}" for r in results.values()]
        print(f"{turn + 1:>4} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
