#!/usr/bin/env python3
"""What loading a model on demand costs, on a running multi-model server.

Streams a long completion from model A (already loaded) and measures its inter-token
latency (ITL) twice: alone, and while a request for model B (not loaded) makes the server
load B. Prints B's time to first token (which includes its load) and A's ITL p50/p99 in
both runs, as JSON.

    stellarchat serve --model A.gguf --model B.gguf --port 8080 &
    scripts/model_switch.py --base-url http://127.0.0.1:8080 --model-a A --model-b B

Only the standard library: it runs from any Python 3.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


def post(base, path, body, on_line=None):
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    res = conn.getresponse()
    if on_line is None:
        return res.status, json.loads(res.read())
    for raw in res:
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            on_line(json.loads(line[6:]))
    return res.status, None


def stream_itl(base, model, tokens):
    """Inter-token latencies (seconds) of one streamed completion."""
    stamps = []
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": tokens, "ignore_eos": True,
            "temperature": 0, "stream": True}
    post(base, "/v1/completions", body, lambda chunk: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])]


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(itl):
    return {"tokens": len(itl) + 1, "itl_p50_ms": round(statistics.median(itl) * 1e3, 1),
            "itl_p99_ms": round(percentile(itl, 0.99) * 1e3, 1), "itl_max_ms": round(max(itl) * 1e3, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8080")
    parser.add_argument("--model-a", required=True, help="loaded; its stream is measured")
    parser.add_argument("--model-b", required=True, help="not loaded; requested mid-stream")
    parser.add_argument("--tokens", type=int, default=160)
    args = parser.parse_args()

    alone = stream_itl(args.base_url, args.model_a, args.tokens)

    result = {}

    def load_b():
        time.sleep(1.0)  # a second into A's stream
        started = time.perf_counter()
        status, body = post(args.base_url, "/v1/completions",
                            {"model": args.model_b, "prompt": "Hello", "max_tokens": 1, "temperature": 0})
        result["status"] = status
        result["seconds"] = time.perf_counter() - started

    loader = threading.Thread(target=load_b)
    loader.start()
    during = stream_itl(args.base_url, args.model_a, args.tokens)
    loader.join()
    print(json.dumps({
        "model_b_first_request": {"status": result.get("status"),
                                  "seconds_including_load": round(result.get("seconds", 0), 3)},
        "model_a_stream_alone": summary(alone),
        "model_a_stream_while_b_loads": summary(during),
    }, indent=2))


if __name__ == "__main__":
    main()
