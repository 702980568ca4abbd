"""`sdk web-ui` in a real headless Chromium (Debian's `chromium`, driven by Playwright): one
page server per test process, over the tiny model type; training runs as the `sdk sft` the page
shows, in a subprocess. Each test makes the runs it needs: `make test` spreads the tests over
two processes, each with its own page. Without Chromium, gradio or Playwright these tests skip,
except under CI=true, where they fail. SFT_SDK_SCREENSHOTS=1 saves each tab into docs/images/."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY_MODEL_TYPE, invoke_sdk, run_folders

pytestmark = pytest.mark.slow

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


# the local hub, recording how each push was asked for (private or not) beside the repository
RECORDING_HUB = """
import json
from pathlib import Path

from sdk import hookimpl
from sdk.hubs import local
from sdk.specs import Hub


def push(folder, repo_id, *, private=True, **options):
    Path(repo_id).parent.mkdir(parents=True, exist_ok=True)
    with (Path(repo_id).parent / "pushes.jsonl").open("a") as record:
        record.write(json.dumps({"repo_id": repo_id, "private": private}) + "\\n")
    return local.push(folder, repo_id, private=private, **options)


@hookimpl
def register_hubs(register):
    register(Hub("recording", local.download, push, "the local hub, recording each push"))
"""


def serve_page(plugins: list[Path], output: Path) -> Any:
    """A page over ``output`` (`sdk web-ui --plugin ... --output-dir OUTPUT`), served."""
    from sdk.plugins import load_plugins
    from sdk.webui.serve import launch

    registry = load_plugins([str(p) for p in plugins]).registry
    return launch(registry, output, "127.0.0.1", free_port(), False, None, 1,
                  [word for p in plugins for word in ("--plugin", str(p))], block=False)


@pytest.fixture(scope="module")
def page_plugins(tiny_plugin_file, tmp_path_factory) -> list[Path]:
    hub = tmp_path_factory.mktemp("hub-plugin") / "recording_hub.py"
    hub.write_text(RECORDING_HUB, encoding="utf-8")
    return [tiny_plugin_file, hub]


@pytest.fixture(scope="module")
def served(page_plugins, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The page's URL and its --output-dir."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        missing("gradio is not installed (pip install 'sft-sdk[webui]')")
    output = tmp_path_factory.mktemp("web-ui") / "output"
    page = serve_page(page_plugins, output)
    yield page.local_url, output
    page.close()


@pytest.fixture(scope="module")
def trained_run(served, tiny_plugin_file, tmp_path_factory) -> Path:
    """A 2-step LoRA run under the page's --output-dir, trained by `sdk sft`: with a learning
    rate that moves the greedy reply (compare mode shows two replies), one row of four held
    out (the Runs tab predicts it)."""
    output = served[1]
    before = run_folders(output)
    result = invoke_sdk(
        "--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE, "--dataset",
        identity_file(tmp_path_factory.mktemp("trained-run")), "--max-steps", 2,
        "--save-steps", 1, "--batch-size", 2, "--learning-rate", 0.05,
        "--split-dataset-ratio", 0.25, "--output-dir", output)
    assert result.exit_code == 0, result.output
    [run] = run_folders(output) - before
    return run


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


@pytest.fixture
def open_tab(browser) -> Iterator[Any]:
    """``open_tab(url)``: a new browser tab on the page, closed after the test (an open tab
    keeps asking the page for news every REFRESH_S)."""
    opened: list[Page] = []

    def open_one(url: str) -> Page:
        opened.append(Page(browser, url))
        return opened[-1]

    yield open_one
    for page in opened:
        page.tab.close()


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

    def choose(self, elem_id: str, value: str) -> None:
        """Pick one of a dropdown's listed choices by clicking it (Enter may come before the
        filtered list is drawn, and picks nothing)."""
        field = self.tab.locator(f"#{elem_id} input").first
        field.click()
        field.fill(value)
        self.tab.get_by_role("option", name=value, exact=True).click()
        field.blur()
        assert self.value(elem_id) == value

    def fill(self, elem_id: str, value: Any) -> None:
        field = self.tab.locator(f"#{elem_id} input, #{elem_id} textarea").first
        field.fill(str(value))
        field.blur()

    def value(self, elem_id: str) -> str:
        return self.tab.locator(f"#{elem_id} input, #{elem_id} textarea").first.input_value()

    def run_action(self, button: str, words: list[Any], timeout_s: float) -> str:
        """Click a Runs tab button; the output of the command it shows (``words``) once run."""
        self.tab.locator(f"#{button}").click()
        self.wait_text("action-command", f"^{re.escape(shlex.join(map(str, words)))}$", 30)
        output = self.wait_text("action-result", "^(?!…$).", timeout_s)
        assert "(exit status" not in output, output
        return output

    def table(self, elem_id: str, count: int, timeout_s: float = 10) -> list[list[str]]:
        """A table's (gr.Dataframe's) rows as the text of their cells, once it shows
        ``count`` rows (it draws the rows in view: a few here)."""
        rows = self.tab.locator(f"#{elem_id} [role=row].virtual-row")
        deadline = time.monotonic() + timeout_s
        while rows.count() != count:
            assert time.monotonic() < deadline, f"#{elem_id} shows {rows.count()} rows"
            time.sleep(0.2)
        return [[cell.strip() for cell in row.locator("[role=gridcell]").all_inner_texts()]
                for row in rows.all()]

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


STOPPED_RUN_STEPS = 6  # enough that Stop comes first, few enough to resume to the end
CLI_REPLIES: dict[tuple[str, ...], str] = {}  # by source: tests ask the same models


def cli_reply(run_cli, tiny_plugin_file, *source: Any) -> str:
    """`sdk infer ... --query QUESTION`'s greedy reply: what the Chat tab must show."""
    key = tuple(map(str, source))
    if key not in CLI_REPLIES:
        result = run_cli("--plugin", tiny_plugin_file, "infer", *source, "--query", QUESTION,
                         "--max-new-tokens", "64", "--stream", "false")
        assert result.exit_code == 0, result.output
        CLI_REPLIES[key] = result.stdout.strip()
    return CLI_REPLIES[key]


def same_text(shown: str, printed: str) -> bool:
    return " ".join(shown.split()) == " ".join(printed.split())


def test_page_loads_and_switches_language(served, open_tab):
    page = open_tab(served[0])
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


def test_chat_round_trip(served, open_tab, run_cli, tiny_plugin_file):
    page = open_tab(served[0])
    shown = page.ask(TINY_MODEL_TYPE, QUESTION)
    assert shown.strip()
    assert same_text(shown, cli_reply(run_cli, tiny_plugin_file, "--model-type",
                                      TINY_MODEL_TYPE)), shown
    page.shoot("chat")
    assert page.errors == []


def train_form(page: Page, data: Path, steps: int, *more: tuple[str, Any]) -> None:
    page.tab_button("Train").click()
    page.pick("model-type", TINY_MODEL_TYPE)
    page.tab.locator("#upload input[type=file]").set_input_files(str(data))
    page.tab.get_by_text("Uploaded:").wait_for(timeout=30_000)
    fields = (("max_steps", steps), ("save_steps", 1), ("batch_size", 2),
              ("gradient_accumulation_steps", 1), ("logging_steps", 1), *more)
    for elem_id, value in fields:
        page.fill(elem_id, value)
    # the command follows each field once it is left, a moment later (the values are none of
    # `sdk sft`'s defaults, which the command leaves out)
    for elem_id, value in fields:
        page.wait_text("command", f"--{elem_id.replace('_', '-')} {value}( |$)", 10)


def test_train_from_the_form_then_chat_with_the_checkpoint(served, open_tab, run_cli,
                                                           tiny_plugin_file, tiny_model_dir,
                                                           tmp_path):
    url, output = served
    before = run_folders(output)
    page = open_tab(url)
    train_form(page, identity_file(tmp_path), 2, ("split_dataset_ratio", 0.25))
    command = page.value("command")
    assert "--dataset " + str(output / ".webui" / "uploads" / "identity.jsonl") in command
    page.tab.locator("#start").click()
    page.wait_text("progress", r"^finished · step 2/2", 300)
    [run] = run_folders(output) - before
    assert page.value("progress").endswith(f" · {run}")
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    page.tab.locator("#loss-plot").get_by_text("train").first.wait_for(timeout=10_000)
    page.shoot("train")
    page.tab_button("Runs").click()
    page.tab.locator("#runs-table").get_by_text("checkpoint-1, checkpoint-2").filter(
        visible=True).first.wait_for(timeout=10_000)

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


def test_runs_tab_exports_pushes_and_predicts(served, trained_run, open_tab, page_plugins,
                                              tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url, run = served[0], trained_run
    checkpoint = run / "checkpoint-2"
    page = open_tab(url)
    page.tab_button("Runs").click()
    page.pick("run", str(run))
    plugin_flags = [word for p in page_plugins for word in ("--plugin", str(p))]

    page.run_action("export", ["sdk", *plugin_flags, "export", "--ckpt-dir", run,
                               "--merge-lora"], 180)
    merged = run / "checkpoint-2-merged"
    files = [[p.relative_to(merged).as_posix(), str(p.stat().st_size)]
             for p in sorted(merged.rglob("*")) if p.is_file()]
    assert page.table("action-table", len(files)) == files
    # transformers' own reader loads it, and it computes what peft's base plus adapter does
    ids = AutoTokenizer.from_pretrained(merged)(QUESTION, return_tensors="pt").input_ids
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                            checkpoint)(ids).logits
    torch.testing.assert_close(exported, adapted, rtol=1e-4, atol=1e-4)

    repo = tmp_path / "hub" / "tiny-identity"
    page.choose("hub", "recording")
    page.fill("repo-id", repo)
    page.run_action("push", ["sdk", *plugin_flags, "push", "--ckpt-dir", run, "--hub",
                             "recording", "--repo-id", repo, "--private"], 120)
    pushes = (repo.parent / "pushes.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in pushes] == [{"repo_id": str(repo), "private": True}]
    files = [[p.relative_to(repo).as_posix(), str(p.stat().st_size)]
             for p in sorted(repo.rglob("*")) if p.is_file()]
    assert page.table("action-table", len(files)) == files
    assert (repo / "adapter_model.safetensors").read_bytes() == (
        checkpoint / "adapter_model.safetensors").read_bytes()

    page.fill("predict-max-new-tokens", 16)
    page.run_action("predict", ["sdk", *plugin_flags, "infer", "--ckpt-dir", run,
                                "--val-dataset-from-run", "--max-new-tokens", 16], 180)
    predictions = run / "predictions" / "checkpoint-2-val.jsonl"
    scores = json.loads(predictions.with_suffix(".metrics.json").read_text())
    [shown] = page.table("action-table", 1)
    assert shown[0] == scores["method"]
    assert [float(cell) for cell in shown[1:]] == pytest.approx(
        [scores[name] for name in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")], abs=1e-3)
    written = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(written) == 1  # 4 rows, a quarter held out
    replies = page.table("predictions-table", 1)
    for cells, row in zip(replies, written, strict=True):
        assert all(same_text(cell, row[key]) for cell, key in zip(
            cells, ("query", "response", "label"), strict=True)), (cells, row)
    page.shoot("runs")
    assert page.errors == []


def test_chat_compare_shows_the_base_and_the_fine_tuned_reply(served, trained_run, open_tab,
                                                               run_cli, tiny_plugin_file):
    url, checkpoint = served[0], trained_run / "checkpoint-2"
    base = cli_reply(run_cli, tiny_plugin_file, "--model-type", TINY_MODEL_TYPE)
    tuned = cli_reply(run_cli, tiny_plugin_file, "--ckpt-dir", checkpoint)
    assert not same_text(base, tuned)  # so the columns tell which model wrote them
    page = open_tab(url)
    page.tab_button("Chat").click()
    page.tab.locator("#compare input[type=checkbox]").check()
    shown = page.ask(str(checkpoint), QUESTION)
    assert same_text(shown, tuned), shown
    base_shown = page.tab.locator("#base-chat .bot").last.inner_text()
    assert same_text(base_shown, base), base_shown
    page.shoot("compare")
    assert page.errors == []


def test_stop_resume_and_a_restarted_page(served, open_tab, page_plugins, run_cli,
                                         tiny_plugin_file, tmp_path):
    """Two tabs see the one run: Stop from the second, then Resume from the Runs tab: the run
    goes on from its last complete checkpoint to the planned step, watched by a page restarted
    meanwhile (the state is the run folders and the job records)."""
    url, output = served
    before = run_folders(output)
    page, other = open_tab(url), open_tab(url)
    train_form(page, identity_file(tmp_path), STOPPED_RUN_STEPS)
    page.tab.locator("#start").click()
    # while `sdk sft` starts: the other tab sees it, and may not start a second one
    other.wait_text("progress", "^running", 30)
    other.tab.locator("#start").click()
    other.tab.get_by_text("A training run is already going").wait_for(timeout=10_000)
    deadline = time.monotonic() + 240
    while not (started := set(output.glob(f"{TINY_MODEL_TYPE}/v*/checkpoint-1")) - {
            run / "checkpoint-1" for run in before}):
        assert time.monotonic() < deadline, "no checkpoint-1 in 240 s"
        time.sleep(0.1)
    other.tab.locator("#stop").click()
    run = next(iter(started)).parent
    page.wait_text("progress", "^stopped · ", 180)
    # a save cut short stays in .partial/ (a resume deletes it); every checkpoint-N is whole
    saved = sorted(run.glob("checkpoint-*"), key=lambda c: int(c.name.split("-")[1]))
    assert saved and all((c / "sft_args.json").is_file() for c in saved)
    stopped_at = int(saved[-1].name.split("-")[1])
    assert stopped_at < STOPPED_RUN_STEPS, "the run ended before Stop: give it more steps"
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", run, "--query",
                     QUESTION, "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert f"loading {saved[-1]}" in result.stderr

    page.tab_button("Runs").click()
    page.pick("run", str(run))
    page.tab.locator("#runs-resume").click()
    page.wait_text("action-result", "^Resumed: ", 30)
    restarted = serve_page(page_plugins, output)
    try:
        fresh = open_tab(restarted.local_url)
        # the resumed run may end before the new page has loaded: running, or finished below
        fresh.wait_text("progress", "^(running|finished)", 30)
        fresh.wait_text("progress", f"^finished · step {STOPPED_RUN_STEPS}/{STOPPED_RUN_STEPS} "
                        f".* · {re.escape(str(run))}$", 300)
        page.tab_button("Train").click()
        page.wait_text("progress", f"^finished · step {STOPPED_RUN_STEPS}/", 10)
        tables = []
        for tab in (page, fresh):
            tab.tab_button("Runs").click()
            tab.tab.locator("#runs-table").get_by_text("running", exact=True).first.wait_for(
                state="detached", timeout=10_000)
            tables.append(tab.table("runs-table", len(run_folders(output))))
        assert fresh.errors == []
    finally:
        restarted.close()
    assert tables[0] == tables[1]
    # the runs other tests in this process made are there too, all finished
    assert sorted(row[0] for row in tables[0]) == sorted(
        str(folder.relative_to(output)) for folder in run_folders(output))
    [resumed] = [row for row in tables[0] if row[0] == str(run.relative_to(output))]
    assert resumed[1:3] == ["finished", f"{STOPPED_RUN_STEPS}/{STOPPED_RUN_STEPS}"]
    assert {row[1] for row in tables[0]} == {"finished"}

    last = run / f"checkpoint-{STOPPED_RUN_STEPS}" / "trainer_state.json"
    state = json.loads(last.read_text())
    assert (state["global_step"], state["max_steps"]) == (STOPPED_RUN_STEPS,) * 2
    resumed_log = max((output / ".webui" / "jobs").glob("*.log"), key=lambda p: int(p.stem))
    assert f"[sdk] resuming {run} from checkpoint-{stopped_at}\n" in resumed_log.read_text()
    logged = [record["step"] for record in map(json.loads, (run / "logging.jsonl").read_text(
        ).splitlines()) if "loss" in record]
    assert logged == list(range(1, STOPPED_RUN_STEPS + 1))  # one uninterrupted run
    # the Train tab's Resume takes the newest run, finished now
    page.tab_button("Train").click()
    page.tab.locator("#resume").click()
    page.tab.get_by_text("only a stopped or failed run resumes").wait_for(timeout=10_000)
    assert page.errors == other.errors == []
