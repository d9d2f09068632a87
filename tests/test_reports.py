"""Reports: tag spans, entity confusion counts, per-type tables, plots, the model card, and what a
training run leaves in its output folder."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import random
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import nerlib
from nerlib.config import TrainConfig
from nerlib.cli import evaluate_main, run, train_main
from nerlib.errors import ConfigError
from nerlib.labels import entity_spans, multinerd_label_set
from nerlib.reports import (
    Confusion, confusion_counts, model_card, plot_confusion, plot_training_curves,
    write_metrics_table, write_reports,
)

from nerlib.scoring import compute_metrics, format_table

from conftest import write_hub_folder


def random_tags(rng: random.Random, length: int, classes=("PER", "LOC", "ORG")) -> list[str]:
    return [rng.choice(["O", "O", "O"] + [f"{p}-{c}" for c in classes for p in "BI"]) for _ in range(length)]


def test_entity_spans_read_tags_like_seqeval():
    from seqeval.metrics.sequence_labeling import get_entities

    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-ORG", "B-PER"]) == [
        ("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 7), ("PER", 7, 8)]
    assert entity_spans(["PER", "PER", "O", "LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]  # no prefix reads as I-
    assert entity_spans([]) == []
    rng = random.Random(3)
    for _ in range(300):
        tags = random_tags(rng, rng.randint(0, 12))
        assert entity_spans(tags) == [(cls, start, end + 1) for cls, start, end in get_entities(tags)]


def test_entity_spans_read_the_tags_of_a_bioes_or_bilou_model_like_seqeval_reads_bioes():
    from seqeval.metrics.sequence_labeling import get_entities

    assert entity_spans(["S-PER", "B-LOC", "E-LOC", "E-LOC", "I-ORG", "S-ORG", "O", "E-PER"]) == [
        ("PER", 0, 1), ("LOC", 1, 3), ("LOC", 3, 4), ("ORG", 4, 5), ("ORG", 5, 6), ("PER", 7, 8)]
    rng = random.Random(4)
    for _ in range(500):
        tags = [rng.choice(["O", "O"] + [f"{p}-{c}" for c in ("PER", "LOC") for p in "BIES"])
                for _ in range(rng.randint(0, 12))]
        expected = [(cls, start, end + 1) for cls, start, end in get_entities(tags)]
        assert entity_spans(tags) == expected, tags
        # BILOU's last and one-word tags are BIOES's under other letters.
        bilou = [tag.replace("E-", "L-").replace("S-", "U-") for tag in tags]
        assert entity_spans(bilou) == expected, bilou


def test_confusion_counts_match_spans_by_boundaries():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"],
            ["B-LOC", "O", "B-PER", "I-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "B-PER", "O"],  # PER right, LOC read as ORG, a spurious PER, ORG missed
            ["B-LOC", "O", "B-PER", "O"]]  # LOC right; PER cut short: missed PER and spurious PER
    confusion = confusion_counts(gold, pred, types=("PER", "LOC", "ORG"))
    assert confusion.types == ("PER", "LOC", "ORG")
    assert confusion.row_labels == ("PER", "LOC", "ORG", "spurious")
    assert confusion.column_labels == ("PER", "LOC", "ORG", "missed")
    np.testing.assert_array_equal(confusion.counts, [
        # PER LOC ORG missed
        [1, 0, 0, 1],  # gold PER
        [0, 1, 1, 0],  # gold LOC
        [0, 0, 0, 1],  # gold ORG
        [2, 0, 0, 0],  # spurious
    ])
    assert confusion.to_dict()["spurious"] == {"PER": 2, "LOC": 0, "ORG": 0, "missed": 0}
    # Classes not listed follow the listed ones, sorted; an empty input gives a 1x1 zero matrix.
    assert confusion_counts([["B-ZOO", "B-ANT"]], [["O", "O"]], types=("PER",)).types == ("PER", "ANT", "ZOO")
    assert confusion_counts([], []).counts.tolist() == [[0]]


def test_confusion_diagonal_and_margins_agree_with_seqeval():
    rng = random.Random(7)
    gold = [random_tags(rng, rng.randint(1, 15)) for _ in range(200)]
    pred = [[tag if rng.random() < 0.7 else rng.choice(["O", "B-PER", "I-LOC", "B-ORG"]) for tag in tags] for tags in gold]
    metrics = compute_metrics(gold, pred)
    confusion = confusion_counts(gold, pred)
    for i, cls in enumerate(confusion.types):
        row = metrics["per_type"][cls]
        assert confusion.counts[i].sum() == row["support"]
        assert confusion.counts[i, i] / row["support"] == pytest.approx(row["recall"])
        assert confusion.counts[i, i] / confusion.counts[:, i].sum() == pytest.approx(row["precision"])
    assert confusion.counts[-1, -1] == 0


METRICS = {
    "precision": 0.75, "recall": 0.6, "f1": 2 / 3, "accuracy": 0.9, "words": 100,
    "per_type": {"LOC": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2},
                 "PER": {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}},
}


def test_metrics_table_as_markdown_and_csv(tmp_path):
    assert format_table(METRICS, "md") == (
        "| type | precision | recall | f1 | support |\n"
        "|:-----|----------:|-------:|---:|--------:|\n"
        "| LOC | 1.0000 | 0.5000 | 0.6667 | 2 |\n"
        "| PER | 0.6667 | 0.6667 | 0.6667 | 3 |\n"
        "| overall | 0.7500 | 0.6000 | 0.6667 | 5 |\n"
    )
    path = write_metrics_table(METRICS, str(tmp_path / "table.csv"))
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["type"] for row in rows] == ["LOC", "PER", "overall"]
    assert float(rows[1]["precision"]) == 2 / 3 and rows[2]["support"] == "5"  # full precision in CSV
    with pytest.raises(ConfigError, match=r"table\.txt: .*use \.md or \.csv"):
        write_metrics_table(METRICS, str(tmp_path / "table.txt"))


def read_image(path: str) -> np.ndarray:
    from matplotlib.image import imread

    return imread(path)


def assert_sensible_image(path: str) -> None:
    image = read_image(path)
    height, width = image.shape[:2]
    assert 250 <= height <= 2500 and 250 <= width <= 2500, image.shape
    assert image.std() > 0.01  # something was drawn


def test_plots_decode_as_images(tmp_path):
    metrics = {"train_loss_by_step": [[step, 2.0 / step] for step in range(1, 120)], "best_epoch": 2,
               "epochs": [{"epoch": 1, "val": {"f1": 0.4}}, {"epoch": 2, "val": {"f1": 0.7}}, {"epoch": 3, "val": {"f1": 0.6}}]}
    curves = plot_training_curves(metrics, str(tmp_path / "curves.png"))
    confusion = confusion_counts([["B-PER", "O", "B-LOC"]], [["B-PER", "B-ORG", "B-PER"]], ("PER", "LOC", "ORG"))
    matrix = plot_confusion(confusion, str(tmp_path / "confusion.png"))
    for path in (curves, matrix):
        assert_sensible_image(path)
    # No validation split and no steps still draw.
    assert_sensible_image(plot_training_curves({"epochs": [{"epoch": 1}]}, str(tmp_path / "bare.png")))


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make every `import matplotlib...` fail, as where the `plots` extra is not installed."""
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_without_matplotlib_plots_are_skipped_with_a_hint(no_matplotlib, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="nerlib.reports"):
        assert plot_training_curves({"epochs": []}, str(tmp_path / "curves.png")) is None
        written = write_reports(str(tmp_path), TrainConfig(model="m", data="d"), multinerd_label_set("PER,LOC"),
                                {"epochs": [], "test": None, "val": None}, [[0]], [[0]])
    assert "pip install nerlib[plots]" in caplog.text
    assert written == {"model_card": str(tmp_path / "README.md"), "training_curves": None, "confusion": None,
                       "report": None, "report_json": None}
    assert os.listdir(tmp_path) == ["README.md"]


def test_model_card_names_the_hub_base_model_only_for_hub_ids(tmp_path):
    card = model_card({"epochs": [], "best_epoch": 1}, TrainConfig(model="distilbert-base-uncased"),
                      multinerd_label_set("five"))
    assert "base_model: distilbert-base-uncased" in card and "Tags of the other MultiNERD classes" in card
    card = model_card({"epochs": [], "best_epoch": 1}, TrainConfig(model=str(tmp_path)), multinerd_label_set("five"))
    assert "base_model" not in card


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_encoder):
    """A two-epoch run of the train CLI with the progress bar on (about 2 s on one thread)."""
    root = tmp_path_factory.mktemp("report-run")
    data = write_hub_folder(root / "multinerd")
    output_dir = str(root / "model")
    printed, bar = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(bar):
        code = run(train_main, ["--labels", "five", "--data", data, "--model", tiny_encoder, "--output-dir", output_dir,
                                "--epochs", "2", "--lr", "5e-3", "--batch-size", "16", "--max-length", "32",
                                "--num-threads", "1"])
    assert code == 0
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    return SimpleNamespace(model_dir=output_dir, data=data, metrics=metrics, printed=printed.getvalue(),
                           stderr=bar.getvalue())


def test_training_leaves_reports_beside_the_model(finished_run):
    model_dir, metrics = finished_run.model_dir, finished_run.metrics
    for name in ("README.md", "training_curves.png", "confusion.png"):
        assert os.path.join(model_dir, name) in finished_run.printed
    assert os.path.join(model_dir, "metrics.json") in finished_run.printed
    assert_sensible_image(os.path.join(model_dir, "training_curves.png"))
    assert_sensible_image(os.path.join(model_dir, "confusion.png"))
    # One loss per optimizer step: 96 training windows in batches of 16, for two epochs.
    assert [step for step, _ in metrics["train_loss_by_step"]] == list(range(1, 13))
    assert all(loss > 0 for _, loss in metrics["train_loss_by_step"])
    # The progress bar spans the run and shows the training speed.
    assert "12/12" in finished_run.stderr and "words/s=" in finished_run.stderr


def test_model_card_table_matches_metrics_json(finished_run):
    with open(os.path.join(finished_run.model_dir, "README.md"), encoding="utf-8") as handle:
        card = handle.read()
    test = finished_run.metrics["test"]
    expected = {name: row for name, row in test["per_type"].items()}
    expected["overall"] = {"precision": test["precision"], "recall": test["recall"], "f1": test["f1"],
                           "support": sum(row["support"] for row in test["per_type"].values())}
    results = card[card.index("## Results"):card.index("## Usage")]
    table = {}
    for line in results.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] in expected:
            table[cells[0]] = cells[1:]
    assert set(table) == set(expected)
    for name, row in expected.items():
        assert table[name] == [f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"])]
    assert "Label set `five`" in card
    assert 'pipeline("token-classification"' in card and "nerlib.predict(" in card
    assert "![training curves](training_curves.png)" in card


def test_evaluate_cli_writes_tables_and_confusion(finished_run, tmp_path):
    md, csv_path, png = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "val-confusion.png"
    args = [finished_run.model_dir, "--split", "val", "--device", "cpu"]
    assert run(evaluate_main, args + ["--table-out", str(md), "--confusion-out", str(png)]) == 0
    assert run(evaluate_main, args + ["--table-out", str(csv_path)]) == 0
    metrics = nerlib.evaluate(finished_run.model_dir, split="val", device="cpu")
    assert md.read_text(encoding="utf-8") == format_table(metrics, "md")
    assert csv_path.read_text(encoding="utf-8") == format_table(metrics, "csv")
    assert_sensible_image(str(png))


def test_evaluate_cli_rejects_a_table_format_before_evaluating(finished_run, tmp_path, capsys):
    assert run(evaluate_main, [finished_run.model_dir, "--table-out", str(tmp_path / "t.json")]) == 2
    assert "t.json: table format unknown" in capsys.readouterr().err


def test_training_without_matplotlib_still_succeeds(no_matplotlib, tmp_path, tiny_encoder, capsys, caplog):
    data = write_hub_folder(tmp_path / "multinerd", sizes=(16, 8, 8))
    output_dir = str(tmp_path / "model")
    with caplog.at_level(logging.WARNING, logger="nerlib.reports"):
        assert run(train_main, ["--labels", "five", "--data", data, "--model", tiny_encoder, "--output-dir", output_dir,
                                "--epochs", "1", "--batch-size", "16", "--max-length", "32", "--num-threads", "1",
                                "--no-progress"]) == 0
    files = os.listdir(output_dir)
    assert "README.md" in files and "metrics.json" in files and "model.safetensors" in files
    assert not [name for name in files if name.endswith(".png")]
    assert "not drawn: pip install nerlib[plots]" in capsys.readouterr().out
    assert "pip install nerlib[plots]" in caplog.text


def test_confusion_is_a_value():
    confusion = Confusion(("PER",), np.array([[1, 2], [3, 0]]))
    assert confusion.to_dict() == {"PER": {"PER": 1, "missed": 2}, "spurious": {"PER": 3, "missed": 0}}
