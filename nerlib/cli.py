"""What the command-line programs share: logging set-up and one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from typing import Callable

from .config import BACKENDS, ServeConfig, TrainConfig, add_config_arguments, check_numbers, config_from_args
from .convert import WRITERS, convert
from .distributed import env_rank
from .errors import ConfigError, NerlibError, TrainingStopped
from .evaluation import evaluate, prepare_output_file
from .export import export, format_parity
from .formats import ON_OVERLAP, ReadOptions
from .html_report import entity_page_head, entity_page_tail, entity_page_text
from .loop import METRICS_FILE, train
from .prediction import predict_stream, read_texts
from .reports import PLOTS_HINT, display_name, plots_available, table_format, write_metrics_table
from .schemes import SCHEME_CHOICES
from .scoring import format_table
from .serve import serve
from .text import json_line
from .tracking import TENSORBOARD_DIR, TRAIN_LOG_FILE

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130
STDOUT = "standard output"


class OutputClosed(Exception):
    """The reader of standard output went away (`| head -1`): the program stops quietly."""


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a CLI's main: a user error becomes one line on stderr and exit code 2, never a traceback.

    A closed standard output (a pipe whose reader stopped) ends the program quietly with exit code
    0, as Unix tools stop; any other error writing it (a full disk) is a user error.
    """
    # Under torchrun only rank 0 reports progress; the other ranks speak up for warnings and errors.
    rank = env_rank()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(message)s" if rank == 0 else f"[rank {rank}] %(message)s", stream=sys.stderr)
    # onnxscript and onnx_ir report every graph rewrite of an ONNX export at INFO.
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "datasets", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading and shard-writing bars drown the training bar
    prog = os.path.basename(sys.argv[0]) or "nerlib"
    try:
        code = main(argv)
        write(sys.stdout, STDOUT, flush=True)  # what is still buffered fails here, not at the interpreter's exit
        return code
    except OutputClosed:
        return 0
    except NerlibError as exc:
        kind = "stopped" if isinstance(exc, TrainingStopped) else "error"
        print(f"{prog}: {kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def write(stream, name: str, text: str = "", flush: bool = False) -> None:
    """Write to an output stream, turning its errors into user errors.

    Args:
        stream: an open text stream (standard output, or a file the user named).
        name: what to call it in an error message.
        text: what to write.
        flush: flush the stream too.

    Raises:
        OutputClosed: standard output is a pipe whose reader went away.
        ConfigError: any other write error (a full disk), naming the stream, or text for a
            standard output the program was started without (`>&-`).
    """
    if stream is None:  # Python's sys.stdout when file descriptor 1 was closed before the start
        if text:
            raise ConfigError(f"{name}: cannot write (it is closed)")
        return
    try:
        stream.write(text)
        if flush:
            stream.flush()
    except OSError as exc:
        if stream is sys.stdout:
            _discard_stdout()
            if isinstance(exc, BrokenPipeError):
                raise OutputClosed from None
        raise ConfigError(f"{name}: cannot write ({exc.strerror or exc})") from None


def _discard_stdout() -> None:
    """Point standard output at the null device, so what is still buffered cannot fail again at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a captured stream): nothing to flush at exit
        pass


def say(*lines: str) -> None:
    """Print lines on standard output (see `write` for its errors)."""
    write(sys.stdout, STDOUT, "".join(line + "\n" for line in lines))


def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fine-tune a pre-trained transformer for named entity recognition.")
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args(argv))
    metrics = train(config)
    if env_rank() != 0:
        return 0
    if metrics["test"] is not None:
        test = metrics["test"]
        say(metrics_tables(test, title=f"test ({metrics['label_set']}, best epoch {metrics['best_epoch']})"),
            f"scored {test['words']} of {metrics['test_words_in_split']} test words")
    elif metrics["val"] is not None:
        say(metrics_tables(metrics["val"], title=f"val ({metrics['label_set']}, best epoch {metrics['best_epoch']})"))
    say(f"training: {metrics['train_words_per_s']:.0f} words/s; wall time {metrics['wall_time_s']:.0f} s",
        saved_summary(metrics))
    return 0


def metrics_tables(metrics: dict, title: str) -> str:
    """The overall table, then one table a language when the split holds several."""
    tables = [format_table(metrics, title=title)]
    for lang, scores in metrics.get("per_lang", {}).items():
        tables.append(format_table(scores, title=f"{title}, language {lang}"))
    return "\n\n".join(tables)


def add_reading_arguments(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """`--tag-scheme`, `--token-column`, `--tag-column`, `--on-overlap` (None: as the model was trained)."""
    parser.add_argument("--tag-scheme", choices=SCHEME_CHOICES, default="auto" if defaults else None,
                        help="tag scheme of the data (default: " + ("auto, detected per file)" if defaults else
                                                                    "as in training, else auto)"))
    parser.add_argument("--token-column", type=int, metavar="N", help="column files: the token's column, from 1")
    parser.add_argument("--tag-column", type=int, metavar="N", help="column files: the tag's column, from 1")
    parser.add_argument("--on-overlap", choices=ON_OVERLAP, default="error" if defaults else None,
                        help="overlapping character spans: error or keep-longest")


def saved_summary(metrics: dict) -> str:
    """Where a training run saved everything, one file a line."""
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
    parser.add_argument("--data", help="data source: a folder, a file (scored whole), or a hub id (default: the one "
                                       "the model was trained on)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--lang", help="language(s) of the data: en, en,de, all; with several, the metrics are also "
                                       "given per language (default: the training language)")
    add_reading_arguments(parser, defaults=False)
    parser.add_argument("--batch-size", type=int, default=64, help="windows per inference batch (default: 64)")
    parser.add_argument("--max-length", type=int, help="window size in sub-tokens (default: the training one)")
    parser.add_argument("--max-samples", type=int, help="score only the first N sentences")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_precision_arguments(parser)
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
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    check_numbers(batch_size=args.batch_size, max_length=args.max_length, max_samples=args.max_samples,
                  token_column=args.token_column, tag_column=args.tag_column, report_sentences=args.report_sentences)
    if args.table_out:
        table_format(args.table_out)  # a bad extension fails now, not after the evaluation
        prepare_output_file(args.table_out)
    options = dict(data=args.data, split=args.split, lang=args.lang, batch_size=args.batch_size,
                   max_length=args.max_length, max_samples=args.max_samples, device=args.device, amp=args.amp,
                   amp_dtype=args.amp_dtype, predictions_out=args.predictions_out, cache=args.cache,
                   cache_dir=args.cache_dir, tag_scheme=args.tag_scheme, token_column=args.token_column,
                   tag_column=args.tag_column, on_overlap=args.on_overlap, backend=args.backend, int8=args.int8,
                   trust_remote_code=args.trust_remote_code)
    # --strict scores the same predictions a second way: the model runs once.
    metrics = evaluate(args.model_dir, confusion_out=args.confusion_out, report_out=args.report,
                       report_json_out=args.report_json, report_sentences=args.report_sentences,
                       also_strict=args.strict, **options)
    if args.table_out:
        write_metrics_table(metrics, args.table_out)
        logger.info("wrote the per-type table to %s", args.table_out)
    strict = metrics.pop("strict_metrics", None)
    if args.json:
        if strict is not None:
            metrics["strict"] = strict
        say(json.dumps(metrics, indent=2))
        return 0
    scored = f"scored {metrics['words']} of {metrics['words_in_split']} words in {metrics['sentences']} sentences"
    if metrics["sentences"] < metrics["sentences_in_split"]:
        scored += f" (the first {metrics['sentences']} of the split's {metrics['sentences_in_split']}: --max-samples)"
    say(metrics_tables(metrics, title=f"{metrics['split']} split of {metrics['data']}"), scored)
    if strict is not None:
        say("", format_table(strict, title="strict IOB2"))
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
    add_precision_arguments(parser)
    parser.add_argument("--html", metavar="FILE", help="also write the texts with their entities highlighted to FILE.html")
    add_backend_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # options may come before, between or after the texts
    check_numbers(batch_size=args.batch_size, max_length=args.max_length)
    if args.texts and (args.file or args.document):
        raise ConfigError("give texts as arguments or read them with --file / --document, not both")
    for path in (args.output, args.html):
        if path:
            prepare_output_file(path)
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
        out = stack.enter_context(_output_file(args.output)) if args.output else sys.stdout
        name = args.output or STDOUT
        page = stack.enter_context(_output_file(args.html)) if args.html else None
        if page:
            write(page, args.html, entity_page_head(f"Entities found by {display_name(args.model_dir)}"))
        types: dict[str, None] = {}
        for text, entities in predict_stream(args.model_dir, texts, args.batch_size, args.max_length, args.device,
                                             args.amp, backend=args.backend, int8=args.int8, amp_dtype=args.amp_dtype,
                                             trust_remote_code=args.trust_remote_code):
            write(out, name, json_line({"text": text, "entities": [e.to_dict() for e in entities]}))
            count += 1
            if page:
                write(page, args.html, entity_page_text(count, text, entities))
                types.update(dict.fromkeys(e.type for e in entities))
        if page:
            write(page, args.html, entity_page_tail(types))
    logger.info("tagged %d text(s)%s", count, f" into {args.output}" if args.output else "")
    return 0


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """--amp, --amp-dtype and --trust-remote-code of the inference commands, as `TrainConfig` defines them."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    parser.add_argument("--amp", action="store_true", help="mixed-precision inference")
    parser.add_argument("--amp-dtype", default=fields["amp_dtype"].default, choices=("auto", "bf16", "fp16"),
                        help=fields["amp_dtype"].metadata["help"])
    parser.add_argument("--trust-remote-code", action="store_true", help=fields["trust_remote_code"].metadata["help"])


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and --int8: how a model folder is run."""
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="torch, or onnx for a folder written by `nerlib export --onnx` (ONNX Runtime on the CPU); "
                             "auto: onnx for an exported folder (default: auto)")
    parser.add_argument("--int8", action="store_true", help="with the onnx backend, the int8 model of the folder")


def export_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nerlib export",
        description="Export a trained model folder to ONNX (and int8) with the tokenizer and nerlib's configuration, "
                    "so the new folder alone predicts; then check that it predicts what PyTorch predicts.")
    parser.add_argument("model_dir", help="folder written by train.py")
    parser.add_argument("output_dir", help="the folder to write (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--onnx", action="store_true", help="export to ONNX (model.onnx), the one format so far")
    parser.add_argument("--int8", action="store_true",
                        help="also write model_int8.onnx, its weights dynamically quantised to int8 (ONNX Runtime)")
    parser.add_argument("--parity-texts", metavar="FILE",
                        help="check parity on these texts, one a line (default: a data split)")
    parser.add_argument("--parity-data", metavar="SOURCE",
                        help="data source of the parity split (default: the model's training data)")
    parser.add_argument("--parity-split", default="test", help="split of the parity check (default: test)")
    parser.add_argument("--parity-samples", type=int, metavar="N", help="check on the first N sentences only")
    parser.add_argument("--lang", help="language of hub-layout files (default: the training language)")
    parser.add_argument("--max-f1-drop", type=float, default=0.5,
                        help="most F1 points the int8 model may lose against PyTorch on a split (default: 0.5)")
    parser.add_argument("--batch-size", type=int, default=64, help="windows per batch in the check (default: 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    if not args.onnx:
        raise ConfigError("choose the format to export to: --onnx")
    check_numbers(parity_samples=args.parity_samples, max_f1_drop=args.max_f1_drop, batch_size=args.batch_size)
    texts = None
    if args.parity_texts:
        with _open(args.parity_texts, "rb", "read") as handle:
            texts = [text for text in read_texts(handle, args.parity_texts, False) if text.strip()]
        if not texts:
            raise ConfigError(f"{args.parity_texts}: no texts to check parity on")
    report = export(args.model_dir, args.output_dir, int8=args.int8, parity_texts=texts, parity_data=args.parity_data,
                    parity_split=args.parity_split, parity_samples=args.parity_samples, lang=args.lang,
                    max_f1_drop=args.max_f1_drop, batch_size=args.batch_size, overwrite=args.overwrite)
    print(format_parity(report["parity"]))
    print(f"wrote {', '.join(report['files'])}, the tokenizer and configuration to {report['output_dir']} "
          f"in {report['seconds']:.0f} s")
    return 0


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nerlib serve",
        description="Serve a model folder over HTTP: POST /predict, GET /health, GET /labels, a page at /, the "
                    "OpenAPI schema at /openapi.json. Needs: pip install 'nerlib[serve]'.")
    parser.add_argument("model_dir", help="folder written by train.py or by `nerlib export --onnx`")
    add_config_arguments(parser, ServeConfig)
    args = parser.parse_args(argv)
    serve(args.model_dir, config_from_args(args, ServeConfig))
    return 0


@contextlib.contextmanager
def _output_file(path: str):
    """An output file whose write errors, closing included, are one line (see `write`)."""
    handle = _open(path, "w", "write")
    try:
        yield handle
    except BaseException:
        with contextlib.suppress(OSError):
            handle.close()  # its buffer holds what could not be written; that error is on its way up
        raise
    try:
        handle.close()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror})") from None


def convert_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a data source in another format, entity for entity: bio-tsv (token TAB tag), jsonl "
                    "(MultiNERD's layout, string tags) or spans (text with character-offset entities).")
    parser.add_argument("input", help="a file, a folder or a hub dataset id (anything --data takes)")
    parser.add_argument("output", help="a file for a single-file input, else a folder (one file a split)")
    parser.add_argument("--to", required=True, choices=tuple(WRITERS), help="the format written")
    parser.add_argument("--lang", default="en", help="language(s) read: en, en,de, all (default: en)")
    add_reading_arguments(parser, defaults=True)
    parser.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    args = parser.parse_args(argv)
    options = ReadOptions(args.tag_scheme, args.token_column, args.tag_column, args.on_overlap)
    written = convert(args.input, args.output, args.to, args.lang, options, args.overwrite)
    for split, paths in written.items():
        say(f"{split}: {', '.join(paths)}")
    return 0


def _open(path: str, mode: str, verb: str):
    try:
        return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot {verb} ({exc.strerror})") from None
