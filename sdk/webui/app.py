"""The page of `sdk web-ui` (gradio): Train, Runs, Data and Chat tabs in English or Chinese.
Every action is an `sdk` command (shown, run as a subprocess) or what that command's module
does; the state is the run folders and the job records under --output-dir."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sdk.config import InferArguments
from sdk.errors import SdkError
from sdk.registry import Registry
from sdk.runs.run_dir import checkpoints
from sdk.webui.chat import ChatModels, base_source
from sdk.webui.command import (
    FORM_FIELDS,
    defaults,
    runnable,
    sdk_command,
    sft_arguments,
    shown,
)
from sdk.webui.jobs import Job, Jobs, log_tail
from sdk.webui.results import (
    FILE_COLUMNS,
    PREDICTION_COLUMNS,
    SCORE_COLUMNS,
    files_table,
    predictions_file,
    predictions_table,
    scores_table,
    written_folder,
)
from sdk.webui.runs import COLUMNS, curves, exports, run_folders, run_row, run_rows
from sdk.webui.texts import LANGUAGES, text
from sdk.webui.uploads import SUFFIXES, keep_upload

REFRESH_S = 2.0  # how often the page rereads the run folders
DEFAULT_MODEL_TYPE = "smollm2-135m-instruct"  # the embedded model: trains offline
HISTOGRAM_BINS = 20
PICK_A_RUN = "⚠ Pick a run folder first (the table above lists them)."
FIELD_TEXTS = {"dataset": "datasets"}  # a form field whose text key is not its name


def _list(value: str) -> list[str]:
    """A list field's values, comma-separated (a name may hold spaces: "the sft-sdk team")."""
    return [part.strip() for part in value.split(",") if part.strip()]


def _loss_frame(run: Path | None) -> Any:
    rows = []
    if run is not None:
        found = curves(run)
        rows = ([(step, loss, "train") for step, loss in found.train]
                + [(step, loss, "eval") for step, loss in found.eval])
    return pandas_frame(rows, ["step", "loss", "series"])


def pandas_frame(rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> Any:
    import pandas

    return pandas.DataFrame(rows, columns=list(columns))


def _histogram(lengths: Sequence[int], unit: str) -> Any:
    import numpy
    import pandas

    counts, edges = numpy.histogram(lengths, bins=min(HISTOGRAM_BINS, max(1, len(set(lengths)))))
    return pandas.DataFrame({unit: [f"{int(a)}-{int(b)}" for a, b in zip(edges, edges[1:],
                                                                             strict=False)],
                             "rows": counts})


def build_app(registry: Registry, output_dir: Path, group_flags: Sequence[str] = (),
              max_runs: int = 1) -> Any:
    """The page, over the runs under ``output_dir``; the `sdk` commands it runs get
    ``group_flags`` (``--plugin FILE``...) before the command."""
    import gradio as gr

    from sdk.config import PreviewArguments
    from sdk.data.preview import load_preview

    jobs = Jobs(output_dir, max_runs)
    chat_models = ChatModels(registry)
    model_types = registry.names("models")
    tuners = registry.names("tuners")
    translated: list[tuple[Any, str, str]] = []  # (component, text key, property)

    def labelled(component: Any, key: str, prop: str = "label") -> Any:
        translated.append((component, key, prop))
        return component

    def form_defaults(sft_type: str) -> dict[str, Any]:
        return defaults(registry.get("tuners", sft_type).options)

    start = form_defaults("lora")
    english = LANGUAGES[0]

    def dataset_choices() -> list[str]:
        uploads = output_dir / ".webui" / "uploads"
        files = sorted(str(p) for p in uploads.iterdir()) if uploads.is_dir() else []
        return registry.names("datasets") + files

    def chat_choices() -> list[str]:
        found = [str(folder) for run in run_folders(output_dir)
                 for folder in exports(run) + list(reversed(checkpoints(run)))]
        return found + model_types

    with gr.Blocks(title="sft-sdk") as page:
        with gr.Row():
            labelled(gr.Markdown(text("title", english)), "title", "value")
            language = labelled(gr.Radio(list(LANGUAGES), value=english, elem_id="language",
                                         label=text("language", english)), "language")
        with labelled(gr.Tab(text("tab_train", english), elem_id="tab-train"), "tab_train"):
            fields: dict[str, Any] = {}
            with gr.Row():
                fields["model_type"] = gr.Dropdown(
                    model_types, value=(DEFAULT_MODEL_TYPE if DEFAULT_MODEL_TYPE in model_types
                                        else None), allow_custom_value=True,
                    elem_id="model-type", label=text("model_type", english))
                fields["dataset"] = gr.Dropdown(dataset_choices(), multiselect=True,
                                                allow_custom_value=True, elem_id="dataset",
                                                label=text("datasets", english))
                fields["dataset_info"] = gr.Textbox(elem_id="dataset-info",
                                                    label=text("dataset_info", english))
                upload = labelled(gr.File(file_types=list(SUFFIXES), elem_id="upload", height=120,
                                          label=text("upload", english)), "upload")
            with gr.Row():
                fields["sft_type"] = gr.Dropdown(tuners, value="lora", elem_id="sft-type",
                                                 label=text("sft_type", english))
                for name in ("lora_rank", "lora_alpha", "learning_rate", "num_train_epochs",
                             "max_steps", "batch_size", "gradient_accumulation_steps"):
                    fields[name] = gr.Number(start.get(name) or 0, elem_id=name,
                                             label=text(name, english))
            with gr.Row():
                for name in ("max_length", "save_steps", "logging_steps",
                             "split_dataset_ratio"):
                    fields[name] = gr.Number(start[name], elem_id=name,
                                             label=text(name, english))
                fields["model_name"] = gr.Textbox(elem_id="model-name",
                                                  label=text("model_name", english))
                fields["model_author"] = gr.Textbox(elem_id="model-author",
                                                    label=text("model_author", english))
            for name, component in fields.items():
                labelled(component, FIELD_TEXTS.get(name, name))
            command = labelled(gr.Textbox(label=text("command", english), interactive=False,
                                          buttons=["copy"], elem_id="command"), "command")
            with gr.Row():
                start_button = labelled(gr.Button(text("start", english), variant="primary",
                                                  elem_id="start"), "start", "value")
                stop_button = labelled(gr.Button(text("stop", english), elem_id="stop"),
                                       "stop", "value")
                resume_button = labelled(gr.Button(text("resume", english), elem_id="resume"),
                                         "resume", "value")
            message = gr.Markdown(elem_id="train-message")
            progress = labelled(gr.Textbox(label=text("progress", english), interactive=False,
                                           elem_id="progress"), "progress")
            loss_plot = labelled(gr.LinePlot(_loss_frame(None), x="step", y="loss",
                                             color="series", elem_id="loss-plot",
                                             label=text("loss_plot", english)), "loss_plot")
            log = labelled(gr.Textbox(label=text("log_tail", english), lines=8, max_lines=8,
                                      interactive=False, autoscroll=True, elem_id="log"),
                           "log_tail")

        with labelled(gr.Tab(text("tab_runs", english), elem_id="tab-runs"), "tab_runs"):
            runs_table = labelled(gr.Dataframe(headers=list(COLUMNS), interactive=False,
                                               elem_id="runs-table",
                                               label=text("runs_table", english)),
                                  "runs_table")
            with gr.Row():
                run_choice = labelled(gr.Dropdown([], allow_custom_value=True, elem_id="run",
                                                  label=text("run", english)), "run")
                hub = labelled(gr.Dropdown(registry.names("hubs"), value="huggingface",
                                           elem_id="hub", label=text("hub", english)), "hub")
                repo_id = labelled(gr.Textbox(elem_id="repo-id", label=text("repo_id",
                                                                             english)),
                                   "repo_id")
                private = labelled(gr.Checkbox(True, elem_id="private",
                                               label=text("private", english)), "private")
                predict_tokens = labelled(gr.Number(
                    InferArguments.max_new_tokens, precision=0, minimum=1,
                    elem_id="predict-max-new-tokens",
                    label=text("predict_max_new_tokens", english)), "predict_max_new_tokens")
            with gr.Row():
                export_button = labelled(gr.Button(text("export", english), elem_id="export"),
                                         "export", "value")
                push_button = labelled(gr.Button(text("push", english), elem_id="push"),
                                       "push", "value")
                predict_button = labelled(gr.Button(text("predict", english),
                                                    elem_id="predict"), "predict", "value")
                runs_resume_button = labelled(gr.Button(text("resume", english),
                                                        elem_id="runs-resume"), "resume",
                                              "value")
            action_command = gr.Textbox(show_label=False, interactive=False,
                                        buttons=["copy"], elem_id="action-command")
            action_table = labelled(gr.Dataframe(interactive=False, elem_id="action-table",
                                                 label=text("result_table", english)),
                                    "result_table")
            replies_table = labelled(gr.Dataframe(headers=list(PREDICTION_COLUMNS),
                                                  interactive=False, wrap=True,
                                                  elem_id="predictions-table",
                                                  label=text("predictions", english)),
                                     "predictions")
            action_result = labelled(gr.Textbox(label=text("result", english), lines=10,
                                                interactive=False, elem_id="action-result"),
                                     "result")

        with labelled(gr.Tab(text("tab_data", english), elem_id="tab-data"), "tab_data"):
            with gr.Row():
                data_sets = labelled(gr.Dropdown(dataset_choices(), multiselect=True,
                                                 allow_custom_value=True,
                                                 elem_id="data-dataset",
                                                 label=text("datasets", english)), "datasets")
                data_model = labelled(gr.Dropdown(model_types, value=fields["model_type"].value,
                                                  allow_custom_value=True,
                                                  elem_id="data-model-type",
                                                  label=text("model_type", english)),
                                      "model_type")
                data_folder = labelled(gr.Textbox(elem_id="data-model-folder",
                                                  label=text("model_folder", english)),
                                       "model_folder")
                data_count = labelled(gr.Number(3, precision=0, elem_id="data-count",
                                                label=text("preview_count", english)),
                                      "preview_count")
            preview_button = labelled(gr.Button(text("preview", english),
                                                elem_id="preview"), "preview", "value")
            data_message = gr.Markdown(elem_id="data-message")
            rows = labelled(gr.HighlightedText(color_map={"trained": "green"},
                                               elem_id="data-rows",
                                               label=text("rows", english)), "rows")
            lengths = labelled(gr.BarPlot(None, x="length", y="rows", elem_id="data-lengths",
                                          label=text("lengths", english)), "lengths")

        with labelled(gr.Tab(text("tab_chat", english), elem_id="tab-chat"), "tab_chat"):
            with gr.Row():
                chat_source = labelled(gr.Dropdown(chat_choices(), allow_custom_value=True,
                                                   value=fields["model_type"].value,
                                                   elem_id="chat-model",
                                                   label=text("chat_model", english)),
                                       "chat_model")
                compare = labelled(gr.Checkbox(False, elem_id="compare",
                                               label=text("compare", english)), "compare")
            with gr.Row():
                system = labelled(gr.Textbox(elem_id="system", label=text("system", english)),
                                  "system")
                max_new_tokens = labelled(gr.Number(64, precision=0, minimum=1,
                                                    elem_id="max-new-tokens",
                                                    label=text("max_new_tokens", english)),
                                          "max_new_tokens")
                do_sample = labelled(gr.Checkbox(False, elem_id="do-sample",
                                                 label=text("do_sample", english)),
                                     "do_sample")
                temperature = labelled(gr.Slider(0.05, 2.0, 0.7, elem_id="temperature",
                                                 label=text("temperature", english)),
                                       "temperature")
                top_p = labelled(gr.Slider(0.05, 1.0, 0.9, elem_id="top-p",
                                           label=text("top_p", english)), "top_p")
            with gr.Row():
                # replies as the model wrote them, as `sdk infer` prints them (no Markdown)
                base_chat = labelled(gr.Chatbot(visible=False, elem_id="base-chat",
                                                render_markdown=False,
                                                label=text("base_reply", english)),
                                     "base_reply")
                chat = labelled(gr.Chatbot(elem_id="chat", render_markdown=False,
                                           label=text("reply", english)),
                                "reply")
            user_message = labelled(gr.Textbox(elem_id="message",
                                               label=text("message", english)), "message")
            with gr.Row():
                send = labelled(gr.Button(text("send", english), variant="primary",
                                          elem_id="send"), "send", "value")
                clear = labelled(gr.Button(text("clear", english), elem_id="clear"),
                                 "clear", "value")

        timer = gr.Timer(REFRESH_S)

        # -- Train
        form = [fields[name] for name in FORM_FIELDS if name in fields]

        def words(*values: Any) -> list[str]:
            given = dict(zip([n for n in FORM_FIELDS if n in fields], values, strict=True))
            for name in ("model_name", "model_author"):
                given[name] = _list(given[name] or "")
            given["output_dir"] = str(output_dir)
            tuner = registry.get("tuners", given["sft_type"])
            return sdk_command(group_flags, "sft", sft_arguments(given, tuner.options))

        def show_command(*values: Any) -> str:
            try:
                return shown(words(*values))
            except SdkError as error:
                return str(error)

        # one listener, one event at a time: a stale command never overwrites a newer one
        gr.on([page.load] + [component.change for component in form], show_command, form,
              command, concurrency_limit=1, trigger_mode="always_last")

        def start_run(*values: Any) -> tuple[str, str]:
            try:
                job = jobs.start(words(*values))
            except SdkError as error:
                return show_command(*values), f"⚠ {error}"
            return job.line(), f"Started: `{job.line()}`"

        # the command box shows what Start ran
        start_button.click(start_run, form, [command, message])

        def stop_run() -> str:
            job = jobs.stop()
            return "Nothing is training." if job is None else f"Stopped: {job.run_dir or ''}"

        stop_button.click(stop_run, None, message)

        def resume(run: str | None) -> str:
            """Resume ``run`` if it stopped or failed; what happened, as the page says it."""
            if not run:
                return "⚠ No run to resume: pick one, or start one."
            row = run_row(Path(run), jobs)
            if row.status not in ("stopped", "failed"):
                return f"⚠ {run} is {row.status}: only a stopped or failed run resumes."
            try:
                resumed = jobs.resume(Path(run))
            except SdkError as error:
                return f"⚠ {error}"
            return f"Resumed: `{resumed.line()}`"

        def resume_newest() -> str:
            trained = [job for job in jobs.jobs() if job.run_dir]
            return resume(trained[-1].run_dir if trained else None)

        resume_button.click(resume_newest, None, message)

        def watch() -> tuple[str, Any, str]:
            known = jobs.jobs()
            if not known:
                return "", _loss_frame(None), ""
            job: Job = known[-1]
            run = Path(job.run_dir) if job.run_dir else None
            if run is None:
                return f"{job.state}: {job.line()}", _loss_frame(None), log_tail(job)
            row = run_row(run, jobs)
            checkpoints_text = ", ".join(row.checkpoints) or "-"
            steps = f"{row.step}/{row.max_steps}" if row.max_steps else str(row.step)
            return (f"{row.status} · step {steps} · checkpoints: {checkpoints_text} · {run}",
                    _loss_frame(run), log_tail(job))

        timer.tick(watch, None, [progress, loss_plot, log])

        def uploaded(file: str | None, chosen: list[str] | None) -> tuple[Any, str]:
            if not file:
                return gr.update(), ""
            try:
                kept = keep_upload(Path(file), Path(file).name, output_dir, registry)
            except SdkError as error:
                return gr.update(), f"⚠ {error}"
            return (gr.update(choices=dataset_choices(), value=(chosen or []) + [str(kept)]),
                    f"Uploaded: {kept}")

        upload.upload(uploaded, [upload, fields["dataset"]], [fields["dataset"], message])

        # -- Runs
        def runs_view(pick_newest: bool = False) -> tuple[Any, Any]:
            """The table and the runs to pick from; a refresh leaves the pick alone (it would
            undo one made while it was on its way), the page's first view picks the newest."""
            found = run_rows(output_dir, jobs)
            names = [str(row.run) for row in found]
            picked = {"value": names[0]} if pick_newest and names else {}
            return [row.cells(output_dir) for row in found], gr.update(choices=names, **picked)

        timer.tick(runs_view, None, [runs_table, run_choice])
        page.load(lambda: runs_view(pick_newest=True), None, [runs_table, run_choice])

        def run_action(words: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run(runnable(words), capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)

        def action_output(done: subprocess.CompletedProcess) -> str:
            return (done.stdout + done.stderr).strip() + (
                "" if done.returncode == 0 else f"\n(exit status {done.returncode})")

        def folder_action(run: str | None, command_name: str, arguments: list[str]
                          ) -> Iterator[tuple[str, Any, str]]:
            """Export or push ``run``: the files of the folder it printed, if it wrote one."""
            if not run:
                yield "", None, PICK_A_RUN
                return
            words = sdk_command(group_flags, command_name, ["--ckpt-dir", run, *arguments])
            yield shown(words), None, "…"
            done = run_action(words)
            folder = written_folder(done.stdout) if done.returncode == 0 else None
            table = (pandas_frame(files_table(folder), FILE_COLUMNS) if folder is not None
                     else None)
            yield shown(words), table, action_output(done)

        def export_run(run: str | None) -> Iterator[tuple[str, Any, str]]:
            yield from folder_action(run, "export", ["--merge-lora"])

        def push_run(run: str | None, hub_name: str, repo: str, is_private: bool
                     ) -> Iterator[tuple[str, Any, str]]:
            yield from folder_action(run, "push", [
                "--hub", hub_name, "--repo-id", repo, "--private" if is_private else "--public"])

        def predict_run(run: str | None, tokens: float | None
                        ) -> Iterator[tuple[str, Any, Any, str]]:
            """Predict the run's held-out rows: the scores and replies of the file written."""
            if not run:
                yield "", None, None, PICK_A_RUN
                return
            words = sdk_command(group_flags, "infer", [
                "--ckpt-dir", run, "--val-dataset-from-run", "--max-new-tokens",
                str(int(tokens or InferArguments.max_new_tokens))])
            yield shown(words), None, None, "…"
            done = run_action(words)
            found = predictions_file(done.stderr) if done.returncode == 0 else None
            if found is None:
                yield shown(words), None, None, action_output(done)
                return
            yield (shown(words), pandas_frame(scores_table(found), SCORE_COLUMNS),
                   pandas_frame(predictions_table(found), PREDICTION_COLUMNS),
                   action_output(done))

        export_button.click(export_run, run_choice, [action_command, action_table,
                                                     action_result])
        push_button.click(push_run, [run_choice, hub, repo_id, private],
                          [action_command, action_table, action_result])
        predict_button.click(predict_run, [run_choice, predict_tokens],
                             [action_command, action_table, replies_table, action_result])
        runs_resume_button.click(resume, run_choice, action_result)

        # -- Data
        def preview(datasets: list[str] | None, model_type: str, folder: str, count: float
                    ) -> tuple[str, Any, Any]:
            try:
                preview = load_preview(PreviewArguments(
                    dataset=list(datasets or []), model_type=model_type or None,
                    model_id_or_path=folder.strip() or None), registry)
                pieces: list[tuple[str, str | None]] = []
                for number in range(1, min(int(count), len(preview.conversations)) + 1):
                    pieces.append((f"\n--- row {number} ---\n", None))
                    pieces += [(piece, "trained" if trained else None)
                               for piece, trained in preview.pieces(number, "all")]
            except SdkError as error:
                return f"⚠ {error}", None, None
            unit = "tokens" if preview.unit == "tokens" else "characters"
            frame = _histogram(preview.lengths, unit)
            return (preview.summary, pieces,
                    gr.update(value=frame, x=unit, y="rows"))

        preview_button.click(preview, [data_sets, data_model, data_folder, data_count],
                             [data_message, rows, lengths])

        # -- Chat
        def settings(tokens: float, sample: bool, temp: float, p: float) -> dict[str, Any]:
            return dict(max_new_tokens=int(tokens), do_sample=sample, temperature=temp,
                        top_p=p)

        def respond(source: str, text_in: str, history: list[dict], base_history: list[dict],
                    comparing: bool, system_text: str, tokens: float, sample: bool,
                    temp: float, p: float) -> Iterator[tuple[list, list, str]]:
            if not text_in.strip():
                yield history, base_history, ""
                return
            # the message stays in its box until every reply is complete
            chosen = settings(tokens, sample, temp, p)
            targets = [(source, history)]
            try:
                if comparing:
                    targets.insert(0, (base_source(source, registry), base_history))
                for model_source, conversation in targets:
                    asked = [{"role": m["role"], "content": _content(m)} for m in conversation]
                    asked.append({"role": "user", "content": text_in})
                    conversation.append({"role": "user", "content": text_in})
                    conversation.append({"role": "assistant", "content": ""})
                    for reply in chat_models.reply(model_source, asked, system_text, chosen):
                        conversation[-1]["content"] = reply
                        yield history, base_history, gr.update()
            except SdkError as error:
                raise gr.Error(str(error)) from None
            yield history, base_history, ""

        chat_inputs = [chat_source, user_message, chat, base_chat, compare, system,
                       max_new_tokens, do_sample, temperature, top_p]
        send.click(respond, chat_inputs, [chat, base_chat, user_message])
        user_message.submit(respond, chat_inputs, [chat, base_chat, user_message])
        clear.click(lambda: ([], []), None, [chat, base_chat])
        compare.change(lambda on: gr.update(visible=on), compare, base_chat)
        page.load(lambda: gr.update(choices=chat_choices()), None, chat_source)
        fields["dataset"].focus(lambda: gr.update(choices=dataset_choices()), None,
                                fields["dataset"])

        # -- Language
        def switch(chosen: str) -> list[Any]:
            return [gr.update(**{prop: text(key, chosen)}) for _, key, prop in translated]

        language.change(switch, language, [component for component, _, _ in translated])
    return page


def _content(message: dict) -> str:
    """A chatbot message's text (gradio may hand it back as a list of parts)."""
    content = message["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part)
                       for part in content)
    return str(content)
