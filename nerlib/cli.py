"""What the command-line programs share: logging set-up and one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from typing import Callable

from .config import add_config_arguments, config_from_args
from .distributed import env_rank
from .errors import ConfigError, NerlibError, TrainingStopped
from .evaluation import evaluate, format_table
from .html_report import entity_page_head, entity_page_tail, entity_page_text
from .loop import train
from .prediction import predict_stream, read_texts
from .reports import PLOTS_HINT, display_name, plots_available, table_format, write_metrics_table
from .tracking import TENSORBOARD_DIR, TRAIN_LOG_FILE

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI's main: a user error becomes one line on stderr and exit code 2, never a traceback."""
    # Under torchrun only rank 0 reports progress; the other ranks speak up for warnings and errors.
    rank = env_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading and shard-writing bars drown the training bar
    prog = os.path.basename(sys.argv[0]) or "nerlib"
    try:
        return main(argv)
    except NerlibError as exc:
        kind = "stopped" if isinstance(exc, TrainingStopped) else "error"
        print(f"{prog}: {kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune a pre-trained transformer for named entity recognition.")
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args(argv))
    metrics = train(config)
    if env_rank() != 0:
        return 0
    if metrics["test"] is not None:
        test = metrics["test"]
        print(format_table(test, title=f"test ({metrics['label_set']}, best epoch {metrics['best_epoch']})"))
        print(f"scored {test['words']} of {metrics['test_words_in_split']} test words")
    elif metrics["val"] is not None:
        print(format_table(metrics["val"], title=f"val ({metrics['label_set']}, best epoch {metrics['best_epoch']})"))
    print(f"training: {metrics['train_words_per_s']:.0f} words/s; wall time {metrics['wall_time_s']:.0f} s")
    print(saved_summary(metrics))
    return 0


def saved_summary(metrics: dict) -> str:
    """Where a training run saved everything, one file a line."""
    from .loop import METRICS_FILE

    output_dir = metrics["output_dir"]
    reports = metrics.get("reports", {})
    lines = [f"saved to {output_dir}:",
             f"  model and tokenizer  {output_dir}",
             f"  metrics              {os.path.join(output_dir, METRICS_FILE)}",
             f"  loss of every step   {os.path.join(output_dir, TRAIN_LOG_FILE)}",
             f"  model card           {reports.get('model_card') or '(not written)'}"]
    if os.path.isdir(os.path.join(output_dir, TENSORBOARD_DIR)):
        lines.append(f"  TensorBoard events   {os.path.join(output_dir, TENSORBOARD_DIR)}")
    for key, name in (("training_curves", "training curves"), ("confusion", "confusion matrix"),
                      ("report", "error report")):
        if reports.get(key):
            lines.append(f"  {name:<20} {reports[key]}")
        elif key in ("confusion", "report") and metrics.get("test") is None:
            lines.append(f"  {name:<20} (no test split)")
        elif key != "report":
            why = "see the warning above" if plots_available() else PLOTS_HINT
            lines.append(f"  {name:<20} (not drawn: {why})")
    return "\n".join(lines)


def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score a saved NER model on one split with seqeval.")
    parser.add_argument("model_dir", help="folder written by train.py (or any token-classification model)")
    parser.add_argument("--data", help="data source (default: the one the model was trained on)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--lang", help="language of hub-layout files (default: the training language)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per inference batch (default: 64)")
    parser.add_argument("--max-length", type=int, help="window size in sub-tokens (default: the training one)")
    parser.add_argument("--max-samples", type=int, help="score only the first N sentences")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--amp", action="store_true", help="mixed-precision inference")
    parser.add_argument("--strict", action="store_true", help="also report strict IOB2 entity scores")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="tokenise the split again instead of using the tokenisation cache")
    parser.add_argument("--cache-dir", help="folder of the tokenisation cache (default: $NERLIB_CACHE, else "
                                            "~/.cache/nerlib; an empty value turns the cache off)")
    parser.add_argument("--predictions-out", metavar="FILE", help="write one JSON line a sentence: tokens, gold, pred")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--table-out", metavar="FILE", help="write the per-type table to FILE.md (Markdown) or FILE.csv")
    parser.add_argument("--confusion-out", metavar="FILE",
                        help=f"draw the entity confusion matrix into FILE.png (needs matplotlib: {PLOTS_HINT})")
    parser.add_argument("--report", metavar="FILE", help="write the error report to FILE.html (one self-contained page)")
    parser.add_argument("--report-json", metavar="FILE", help="write the error report's figures to FILE.json")
    parser.add_argument("--report-sentences", type=int, default=100, metavar="N",
                        help="sentences with the most errors listed in the report (default: 100)")
    args = parser.parse_args(argv)
    if args.table_out:
        table_format(args.table_out)  # a bad extension fails now, not after the evaluation
    options = dict(data=args.data, split=args.split, lang=args.lang, batch_size=args.batch_size,
                   max_length=args.max_length, max_samples=args.max_samples, device=args.device, amp=args.amp,
                   predictions_out=args.predictions_out, cache=args.cache, cache_dir=args.cache_dir)
    metrics = evaluate(args.model_dir, confusion_out=args.confusion_out, report_out=args.report,
                       report_json_out=args.report_json, report_sentences=args.report_sentences, **options)
    if args.table_out:
        write_metrics_table(metrics, args.table_out)
        logger.info("wrote the per-type table to %s", args.table_out)
    strict = evaluate(args.model_dir, strict=True, **{**options, "predictions_out": None}) if args.strict else None
    if args.json:
        if strict is not None:
            metrics["strict"] = {k: strict[k] for k in ("precision", "recall", "f1", "accuracy", "words", "per_type")}
        print(json.dumps(metrics, indent=2))
        return 0
    print(format_table(metrics, title=f"{metrics['split']} split of {metrics['data']}"))
    print(f"scored {metrics['words']} of {metrics['words_in_split']} words in {metrics['sentences']} sentences")
    if strict is not None:
        print()
        print(format_table(strict, title="strict IOB2"))
    return 0



def predict_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Find named entities in raw text with a saved model. Writes one JSON line a text: "
                    '{"text", "entities": [{"type", "text", "start", "end", "score", "word_start", "word_end"}]}; '
                    "start and end are character offsets into the text.")
    parser.add_argument("model_dir", help="folder written by train.py (or any token-classification model)")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="texts to tag (default: --file, or standard input)")
    parser.add_argument("--file", metavar="FILE", help="read the texts from FILE, one a line (-: standard input)")
    parser.add_argument("--document", action="store_true",
                        help="read the whole file or standard input as one text (offsets index the whole input)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the JSON lines to FILE (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per inference batch (default: 32)")
    parser.add_argument("--max-length", type=int, help="window size in sub-tokens (default: the training one)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--amp", action="store_true", help="mixed-precision inference")
    parser.add_argument("--html", metavar="FILE", help="also write the texts with their entities highlighted to FILE.html")
    args = parser.parse_intermixed_args(argv)  # options may come before, between or after the texts
    if args.texts and (args.file or args.document):
        raise ConfigError("give texts as arguments or read them with --file / --document, not both")
    count = 0
    with contextlib.ExitStack() as stack:
        if args.texts:
            texts = args.texts
        elif args.file and args.file != "-":
            texts = read_texts(stack.enter_context(_open(args.file, "rb", "read")), args.file, args.document)
        else:
            if sys.stdin.isatty():
                logger.info("reading texts from standard input, one a line (end with Ctrl-D)")
            texts = read_texts(sys.stdin.buffer, "<stdin>", args.document)
        out = stack.enter_context(_open(args.output, "w", "write")) if args.output else sys.stdout
        page = stack.enter_context(_open(args.html, "w", "write")) if args.html else None
        if page:
            page.write(entity_page_head(f"Entities found by {display_name(args.model_dir)}"))
        types: dict[str, None] = {}
        for text, entities in predict_stream(args.model_dir, texts, args.batch_size, args.max_length, args.device,
                                             args.amp):
            out.write(json.dumps({"text": text, "entities": [e.to_dict() for e in entities]}, ensure_ascii=False) + "\n")
            count += 1
            if page:
                page.write(entity_page_text(count, text, entities))
                types.update(dict.fromkeys(e.type for e in entities))
        out.flush()
        if page:
            page.write(entity_page_tail(types))
    logger.info("tagged %d text(s)%s", count, f" into {args.output}" if args.output else "")
    return 0


def _open(path: str, mode: str, verb: str):
    try:
        return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot {verb} ({exc.strerror})") from None
