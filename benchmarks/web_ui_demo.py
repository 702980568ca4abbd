"""The self-cognition demo (examples/self_cognition/demo.sh) end to end through `sdk web-ui`:
the page served by the real command, the Train form filled as the demo's `sdk sft` line in
headless Chromium (Playwright), Start, wait until the run is finished, then the Chat tab asks
the new checkpoint "Who are you?" and "你是谁？".

    python benchmarks/web_ui_demo.py [--baseline]

With SFT_SDK_SCREENSHOTS=1 the Chat tab's answers are saved as docs/images/web-ui-demo.png.
--baseline also runs the form's `sdk sft` command alone in the same job, for the page's share
of the time. Prints the timings on stderr and one JSON object as the last line."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "web-ui-demo.png"
MODEL = "smollm2-135m-instruct"
FORM = {"max_steps": -1, "num_train_epochs": 3, "batch_size": 4,
        "gradient_accumulation_steps": 2, "learning_rate": 1e-3, "save_steps": 1000,
        "model-name": "雪貂, Ferret", "model-author": "sft-sdk 团队, the sft-sdk team"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} input, #{elem_id} textarea").first


def ask(page, question: str) -> str:
    page.locator("#clear").click()
    field(page, "message").fill(question)
    page.locator("#send").click()
    page.wait_for_function(
        "() => document.querySelector('#message textarea').value === ''", timeout=600_000)
    return page.locator("#chat .bot").last.inner_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", action="store_true")
    options = parser.parse_args()
    from playwright.sync_api import sync_playwright

    output = Path(tempfile.mkdtemp(prefix="web-ui-demo-"))
    port = free_port()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "sdk", "web-ui", "--port", str(port),
                               "--output-dir", str(output)], stdin=subprocess.DEVNULL)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}")
                    break
                except Exception:  # the server is still starting
                    time.sleep(1)
            page.wait_for_selector("#start")
            timings["page_ready_s"] = time.perf_counter() - started
            dataset = field(page, "dataset")
            dataset.fill("self-cognition")
            dataset.press("Enter")
            for elem_id, value in FORM.items():
                field(page, elem_id).fill(str(value))
                field(page, elem_id).blur()
            page.wait_for_function("() => document.querySelector('#command textarea')"
                                   ".value.includes('--learning-rate 0.001')")
            command = field(page, "command").input_value()
            print(f"[bench] {command}", file=sys.stderr)
            clicked = time.perf_counter()
            page.locator("#start").click()
            page.wait_for_function("() => document.querySelector('#progress textarea')"
                                   ".value.startsWith('finished')", timeout=3_600_000,
                                   polling=1000)
            timings["train_s"] = time.perf_counter() - clicked
            run = field(page, "progress").input_value().rsplit(" · ", 1)[-1]
            asked = time.perf_counter()
            page.get_by_role("tab", name="Chat").click()
            chat_model = field(page, "chat-model")
            chat_model.fill(run)
            chat_model.press("Enter")
            answers = {question: ask(page, question) for question in ("Who are you?", "你是谁？")}
            timings["chat_s"] = time.perf_counter() - asked
            if os.environ.get("SFT_SDK_SCREENSHOTS") == "1":
                page.screenshot(path=str(SCREENSHOT), full_page=True)
            timings["end_to_end_s"] = time.perf_counter() - started
            browser.close()
    finally:
        server.terminate()
        server.wait()
    if options.baseline:
        words = shlex.split(command)[1:]
        words[words.index("--output-dir") + 1] = str(output / "baseline")
        alone = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sdk", *words], check=True,
                       stdin=subprocess.DEVNULL)
        timings["baseline_train_s"] = time.perf_counter() - alone
    for name, value in timings.items():
        print(f"[bench] {name}: {value:.1f}", file=sys.stderr)
    print(json.dumps({**{k: round(v, 1) for k, v in timings.items()}, "answers": answers,
                      "load_average": os.getloadavg()[0]}, ensure_ascii=False))


if __name__ == "__main__":
    main()
