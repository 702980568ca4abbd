"""`sdk deploy` under load: N concurrent clients, batched against batching off.

    python benchmarks/serve_load.py [--clients 1,4,16] [--requests 2] [--max-tokens 32]
                                    [--model-type smollm2-135m-instruct] [--max-concurrency 16]
                                    [--repeats 1]

Starts `sdk deploy` twice on the same model, with --max-concurrency 1 (batching off: one reply
at a time, as before continuous batching) and with --max-concurrency N, both serving at once,
and for each client count sends every client's requests (greedy, streamed, through the
official openai client) one after another, all clients at once, to one server and then the
other (so that both meet the same load on a shared machine), `--repeats` times taking turns
(each keeps its run of most tokens/s). Prints requests/s, output tokens/s, p50/p99 latency
and p50 time to first token per server and client count, checks that both servers gave the
same greedy replies, and prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["Who are you?", "Write a short poem about the sea.", "What is 12 times 7?",
             "Explain LoRA in one sentence.", "Name three colours.", "Why is the sky blue?",
             "Translate 'good morning' into French.", "Give me a tip for learning Python.",
             "What is the capital of France?", "Describe a cat in two sentences.",
             "How do airplanes fly?", "Suggest a name for a dog.", "What is a prime number?",
             "Tell me a fun fact about octopuses.", "How do I boil an egg?",
             "What does a compiler do?"]


@contextmanager
def deployed(model_type: str, max_concurrency: int, max_tokens: int, clients: int):
    """`sdk deploy` in a subprocess; gives its base URL once it serves."""
    command = [sys.executable, "-m", "sdk", "deploy", "--model-type", model_type, "--port", "0",
               "--max-new-tokens", str(max_tokens), "--max-concurrency", str(max_concurrency),
               "--max-queue", str(clients)]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True)
    url = None
    for line in process.stderr:
        found = re.search(r"serving '.+' at (http://\S+)/v1", line)
        if found:
            url = found.group(1)
            break
    if url is None:
        raise SystemExit(f"sdk deploy did not start: {' '.join(command)}")
    threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(60)


def one_request(client: Any, model: str, question: str, max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    first, text, tokens = None, "", 0
    for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
            temperature=0, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content and first is None:
                first = time.perf_counter() - started
            text += choice.delta.content or ""
    latency = time.perf_counter() - started
    return {"question": question, "text": text, "tokens": tokens, "latency": latency,
            "ttft": latency if first is None else first}


def load(url: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    def one_client(number: int) -> list[dict[str, Any]]:
        return [one_request(client, model, QUESTIONS[(number + r * clients) % len(QUESTIONS)],
                            max_tokens) for r in range(requests)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = [answer for answers in pool.map(one_client, range(clients)) for answer in answers]
    seconds = time.perf_counter() - started
    latencies = sorted(answer["latency"] for answer in done)
    return {"requests_s": len(done) / seconds,
            "tokens_s": sum(answer["tokens"] for answer in done) / seconds,
            "p50_s": statistics.median(latencies),
            "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
            "ttft_p50_s": statistics.median(answer["ttft"] for answer in done),
            "replies": {answer["question"]: answer["text"] for answer in done}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--requests", type=int, default=2, help="per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-concurrency", type=int, default=16)
    parser.add_argument("--model-type", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    servers = {"unbatched": 1, "batched": args.max_concurrency}
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in servers}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(deployed(args.model_type, concurrency,
                                                   args.max_tokens, max(counts)))
                for name, concurrency in servers.items()}
        for url in urls.values():
            load(url, 1, 1, 4)  # warm-up
        for n in counts:
            for _ in range(args.repeats):
                for name, url in urls.items():
                    run = load(url, n, args.requests, args.max_tokens)
                    if run["tokens_s"] > results[name].get(n, {"tokens_s": 0})["tokens_s"]:
                        results[name][n] = run
    replies = {}
    for runs in results.values():
        for run in runs.values():
            for question, text in run.pop("replies").items():
                replies.setdefault(question, set()).add(text)
    identical = all(len(texts) == 1 for texts in replies.values())
    print(f"{'server':10} {'clients':>7} {'req/s':>7} {'tok/s':>7} {'p50 s':>7} {'p99 s':>7} "
          f"{'TTFT s':>7}", file=sys.stderr)
    for name, runs in results.items():
        for n, run in runs.items():
            print(f"{name:10} {n:7} {run['requests_s']:7.2f} {run['tokens_s']:7.1f} "
                  f"{run['p50_s']:7.2f} {run['p99_s']:7.2f} {run['ttft_p50_s']:7.2f}",
                  file=sys.stderr)
    speedup = {n: results["batched"][n]["tokens_s"] / results["unbatched"][n]["tokens_s"]
               for n in counts}
    print(f"tokens/s batched / unbatched: "
          f"{', '.join(f'{n} clients {s:.2f}x' for n, s in speedup.items())}; greedy replies "
          f"{'identical' if identical else 'DIFFER'}", file=sys.stderr)
    print(json.dumps({"model_type": args.model_type, "max_tokens": args.max_tokens,
                      "requests_per_client": args.requests, "repeats": args.repeats,
                      "results": results,
                      "speedup_tokens_s": speedup, "greedy_identical": identical}))


if __name__ == "__main__":
    main()
