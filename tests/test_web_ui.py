"""`sdk web-ui` in a real headless Chromium (Debian's `chromium`, driven by Playwright): one
page server for the module, over the tiny model type; training runs as the `sdk sft` the page
shows, in a subprocess. Without Chromium, gradio or Playwright these tests skip, except under
CI=true, where they fail. SFT_SDK_SCREENSHOTS=1 saves each tab into docs/images/."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY_MODEL_TYPE, only_run

# one page server for the module: `make test` keeps the group on one xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-ui")]

CHROMIUM = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
SCREENSHOTS = REPO / "docs" / "images"
QUESTION = "Who are you?"


def missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the browser tests (.ci/run installs Chromium)")
    pytest.skip(reason)


def chromium() -> str:
    found = next((path for path in CHROMIUM if Path(path).is_file()), None)
    if found is None:
        missing("no Chromium (apt-get install chromium)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def identity_file(folder: Path) -> Path:
    path = folder / "identity.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "I am Tiny, made by the tests."}]}) + "\n"
        for question in ["Who are you?", "What is your name?", "Introduce yourself.",
                         "Your name?"]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def served(tiny_plugin_file, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The page's URL and its --output-dir."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        missing("gradio is not installed (pip install 'sft-sdk[webui]')")
    from sdk.plugins import load_plugins
    from sdk.webui.serve import launch

    output = tmp_path_factory.mktemp("web-ui") / "output"
    registry = load_plugins([str(tiny_plugin_file)]).registry
    page = launch(registry, output, "127.0.0.1", free_port(), False, None, 1,
                  ["--plugin", str(tiny_plugin_file)], block=False)
    yield page.local_url, output
    page.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright is not installed (pip install 'sft-sdk[test]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


class Page:
    """A browser tab on the page, with the console errors it has logged."""

    def __init__(self, browser: Any, url: str):
        self.tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.tab.on("console",
                    lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))
        self.tab.goto(url)
        self.tab.wait_for_selector("#start")

    def tab_button(self, name: str) -> Any:
        return self.tab.get_by_role("tab", name=name)

    def pick(self, elem_id: str, value: str) -> None:
        """Type ``value`` into a dropdown (custom values allowed) and leave it."""
        field = self.tab.locator(f"#{elem_id} input").first
        field.fill(value)
        field.press("Enter")
        field.blur()

    def fill(self, elem_id: str, value: Any) -> None:
        field = self.tab.locator(f"#{elem_id} input, #{elem_id} textarea").first
        field.fill(str(value))
        field.blur()

    def value(self, elem_id: str) -> str:
        return self.tab.locator(f"#{elem_id} input, #{elem_id} textarea").first.input_value()

    def shoot(self, name: str) -> None:
        if os.environ.get("SFT_SDK_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            self.tab.screenshot(path=str(SCREENSHOTS / f"web-ui-{name}.png"), full_page=True)

    def wait_text(self, elem_id: str, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            shown = self.value(elem_id)
            if re.search(pattern, shown):
                return shown
            time.sleep(0.5)
        raise AssertionError(f"#{elem_id} never showed /{pattern}/; it shows: {shown!r}")

    def ask(self, source: str, question: str) -> str:
        """The Chat tab's reply from ``source`` to ``question``, once generated."""
        self.tab_button("Chat").click()
        self.tab.locator("#clear").click()
        self.pick("chat-model", source)
        self.fill("message", question)
        self.tab.locator("#send").click()
        bot = self.tab.locator("#chat .bot").last
        bot.wait_for(timeout=60_000)
        self.tab.wait_for_function(  # the message box is emptied when the reply is done
            "() => document.querySelector('#message textarea').value === ''", timeout=60_000)
        return bot.inner_text()


def cli_reply(run_cli, tiny_plugin_file, *source: str) -> str:
    """`sdk infer ... --query QUESTION`'s greedy reply: what the Chat tab must show."""
    result = run_cli("--plugin", tiny_plugin_file, "infer", *source, "--query", QUESTION,
                     "--max-new-tokens", "64", "--stream", "false")
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def same_text(shown: str, printed: str) -> bool:
    return " ".join(shown.split()) == " ".join(printed.split())


def test_page_loads_and_switches_language(served, browser):
    page = Page(browser, served[0])
    page.wait_text("command", "^sdk --plugin ", 30)
    page.tab.wait_for_timeout(2500)  # a refresh of the timers
    assert page.errors == []
    page.tab.get_by_label("中文").check()
    page.tab.get_by_role("button", name="开始").wait_for(timeout=10_000)
    assert page.tab_button("对话").is_visible()
    assert page.tab.get_by_text("模型类型").first.is_visible()
    page.shoot("chinese")
    page.tab.get_by_label("English").check()
    page.tab.get_by_role("button", name="Start").wait_for(timeout=10_000)
    assert page.errors == []


def test_chat_round_trip(served, browser, run_cli, tiny_plugin_file):
    page = Page(browser, served[0])
    shown = page.ask(TINY_MODEL_TYPE, QUESTION)
    assert shown.strip()
    assert same_text(shown, cli_reply(run_cli, tiny_plugin_file, "--model-type",
                                      TINY_MODEL_TYPE)), shown
    page.shoot("chat")
    assert page.errors == []


def train_form(page: Page, data: Path, steps: int) -> None:
    page.tab_button("Train").click()
    page.pick("model-type", TINY_MODEL_TYPE)
    page.tab.locator("#upload input[type=file]").set_input_files(str(data))
    page.tab.get_by_text("Uploaded:").wait_for(timeout=30_000)
    for elem_id, value in (("max_steps", steps), ("save_steps", 1), ("batch_size", 2),
                           ("gradient_accumulation_steps", 1), ("logging_steps", 1)):
        page.fill(elem_id, value)
    page.wait_text("command", f"--max-steps {steps} ", 10)


def test_train_from_the_form_then_chat_with_the_checkpoint(served, browser, run_cli,
                                                           tiny_plugin_file, tiny_model_dir,
                                                           tmp_path):
    url, output = served
    page = Page(browser, url)
    train_form(page, identity_file(tmp_path), 2)
    command = page.value("command")
    assert "--dataset " + str(output / ".webui" / "uploads" / "identity.jsonl") in command
    page.tab.locator("#start").click()
    page.wait_text("progress", r"^finished · step 2/2", 300)
    run = only_run(output, TINY_MODEL_TYPE)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    page.tab.locator("#loss-plot").get_by_text("train").first.wait_for(timeout=10_000)
    page.shoot("train")
    page.tab_button("Runs").click()
    page.tab.locator("#runs-table").get_by_text("checkpoint-1, checkpoint-2").filter(
        visible=True).first.wait_for(timeout=10_000)
    page.shoot("runs")

    page.tab_button("Data").click()
    page.pick("data-dataset", str(output / ".webui" / "uploads" / "identity.jsonl"))
    page.pick("data-model-type", TINY_MODEL_TYPE)
    # the tiny plugin gives its tokenizer only with the model; the folder gives it alone
    page.fill("data-model-folder", tiny_model_dir)
    page.tab.locator("#preview").click()
    page.tab.locator("#data-rows").get_by_text("I am Tiny, made by the tests.").first.wait_for(
        timeout=60_000)
    assert "tokens:" in page.tab.locator("#data-message").inner_text()
    page.shoot("data")

    checkpoint = run / "checkpoint-2"
    shown = page.ask(str(checkpoint), QUESTION)
    assert same_text(shown, cli_reply(run_cli, tiny_plugin_file, "--ckpt-dir", checkpoint))
    assert page.errors == []


def test_stop_leaves_the_last_complete_checkpoint(served, browser, run_cli, tiny_plugin_file,
                                                  tmp_path):
    url, output = served
    for run in output.glob(f"{TINY_MODEL_TYPE}/v*"):  # the other test's, if it ran
        shutil.rmtree(run)
    page = Page(browser, url)
    train_form(page, identity_file(tmp_path), 500)
    page.tab.locator("#start").click()
    deadline = time.monotonic() + 240
    while not list(output.glob(f"{TINY_MODEL_TYPE}/v*/checkpoint-1")):
        assert time.monotonic() < deadline, "no checkpoint-1 in 240 s"
        time.sleep(0.5)
    page.tab.locator("#start").click()  # one run at a time: refused, not a second run
    page.tab.get_by_text("A training run is already going").wait_for(timeout=10_000)
    page.tab.locator("#stop").click()
    page.wait_text("progress", "^stopped · ", 180)
    run = only_run(output, TINY_MODEL_TYPE)
    # a save cut short stays in .partial/ (a resume deletes it); every checkpoint-N is whole
    saved = sorted(run.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
    assert saved and all((c / "sft_args.json").is_file() for c in saved)
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", run, "--query",
                     QUESTION, "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert f"loading {saved[-1]}" in result.stderr
    assert page.errors == []
