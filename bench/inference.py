#!/usr/bin/env python
"""Raw-text inference: `nerlib.predict` (PyTorch, ONNX fp32, ONNX int8) against transformers' pipeline.

    python bench/inference.py runs/five --onnx-dir runs/five-onnx --threads 2
    python bench/inference.py runs/five --onnx-dir runs/five-onnx --sentences 200 --latency-requests 20 --documents 2

The texts are the first `--sentences` sentences of a split (default: the proxy's test split),
joined back into text (no space before punctuation or clitics, none after opening brackets).
Each run is its own process with the same threads, the same warm-up and the same clock
boundaries (the calls only; loading is outside):

* `pipeline`: `transformers.pipeline("token-classification", aggregation_strategy="first")` on
  the PyTorch model folder, `batch_size` texts per call;
* `torch`: `nerlib.prediction.load_predictor(MODEL_DIR)`, `batch_size` windows per forward pass;
* `onnx`, `onnx-int8`: the same on the exported folder (`nerlib export --onnx --int8`).

Measured per run: throughput (words/s, all texts in one call), latency of a one-sentence request
(p50/p99 over `--latency-requests` sentences, one call each) and of a 2,000-word document (p50/p99
over `--documents` documents of consecutive sentences). Then the entities of nerlib and of the
pipeline are compared on every text the pipeline reads whole (it truncates at the model's maximum
length), and each difference is shown, marked where the pipeline cut a word that nerlib keeps
whole. With `--onnx-dir`, the parity check recorded by the export (F1 of fp32 and int8 on the
split) is shown too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The nerlib of this checkout, not whichever one is installed.
sys.path.insert(0, REPO_ROOT)

RUNS = ("pipeline", "torch", "onnx", "onnx-int8")
RUN_TITLES = {"pipeline": "transformers pipeline", "torch": "nerlib torch fp32", "onnx": "nerlib onnx fp32",
              "onnx-int8": "nerlib onnx int8"}
DEFAULT_DATA = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "multinerd-proxy"))
TARGETS = {"torch": 3.0, "onnx-int8": 5.0}  # words/s over the pipeline's, sentence batches, fp32 on 2 cores
DOCUMENT_WORDS = 2000

# Tokens written without a space before them, and after them (MultiNERD and CoNLL tokenisation).
_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "}", "%", "'s", "'S", "n't", "'re", "'ve", "'ll", "'m",
                    "'d", "’s"}
_NO_SPACE_AFTER = {"(", "[", "{", "$", "#"}


def join_words(tokens: list[str]) -> str:
    """Pre-split tokens turned back into text: `["Paris", ",", "France", "."]` -> `"Paris, France."`."""
    text = ""
    for index, token in enumerate(tokens):
        glued = index == 0 or token in _NO_SPACE_BEFORE or tokens[index - 1] in _NO_SPACE_AFTER
        text += token if glued else " " + token
    return text


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def build_texts(data: str, split: str, lang: str, sentences: int, documents: int) -> dict:
    """Sentences as texts, and documents of at least DOCUMENT_WORDS words of consecutive sentences."""
    from nerlib.data import load_split

    loaded = load_split(data, split, lang)
    chosen = loaded.sentences[:sentences]
    texts = [join_words(list(s.tokens)) for s in chosen]
    docs, current, words = [], [], 0
    for sentence in loaded.sentences:
        if len(docs) == documents:
            break
        current.append(join_words(list(sentence.tokens)))
        words += len(sentence.tokens)
        if words >= DOCUMENT_WORDS:
            docs.append((" ".join(current), words))
            current, words = [], 0
    return {"texts": texts, "text_words": [len(s.tokens) for s in chosen], "words": sum(len(s.tokens) for s in chosen),
            "documents": [d for d, _ in docs],
            "document_words": [w for _, w in docs], "source": loaded.source}


# ----------------------------------------------------------------------------------------------
# Child processes: one run each.
# ----------------------------------------------------------------------------------------------

def make_tagger(args: argparse.Namespace, run: str):
    """A function from a list of texts to their entities, `[(type, start, end, score), ...]` per text."""
    if run == "pipeline":
        from transformers import pipeline

        tagger = pipeline("token-classification", model=args.model_dir, aggregation_strategy="first", device="cpu")

        def call(texts):
            found = tagger(texts, batch_size=args.batch_size)
            return [[(e["entity_group"], int(e["start"]), int(e["end"]), float(e["score"])) for e in entities]
                    for entities in found]

        return call, tagger.tokenizer
    from nerlib.prediction import load_predictor

    folder = args.model_dir if run == "torch" else args.onnx_dir
    predictor = load_predictor(folder, batch_size=args.batch_size, device="cpu", backend="torch" if run == "torch" else "onnx",
                               int8=run == "onnx-int8", num_threads=args.threads)

    def call(texts):
        return [[(e.type, e.start, e.end, e.score) for e in entities] for entities in predictor(texts)]

    return call, predictor.tokenizer


def timed(function, *call_args) -> tuple[float, object]:
    started = time.perf_counter()
    result = function(*call_args)
    return time.perf_counter() - started, result


def child_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    corpus = build_texts(args.data, args.split, args.lang, args.sentences, args.documents)
    texts, documents = corpus["texts"], corpus["documents"]
    tag, tokenizer = make_tagger(args, args.child)
    # The same warm-up for every run: a batch of sentences, one sentence, one document.
    tag(texts[:args.batch_size])
    tag(texts[:1])
    if documents:
        tag(documents[:1])
    throughput_s, entities = timed(tag, texts)
    sentence_ms = [1000 * timed(tag, [text])[0] for text in texts[:args.latency_requests]]
    document_ms, document_entities = [], []
    for document in documents:
        seconds, found = timed(tag, [document])
        document_ms.append(1000 * seconds)
        document_entities.append(found[0])
    limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length < 1_000_000 else None
    result = {
        "run": args.child,
        "threads": torch.get_num_threads(),
        "texts": len(texts),
        "words": corpus["words"],
        "seconds": throughput_s,
        "words_per_s": corpus["words"] / throughput_s,
        "sentence_ms": {"p50": percentile(sentence_ms, 50), "p99": percentile(sentence_ms, 99), "n": len(sentence_ms)},
        "document_ms": {"p50": percentile(document_ms, 50), "p99": percentile(document_ms, 99), "n": len(document_ms),
                        "words": corpus["document_words"]},
        "entities": entities,
        "document_entities": document_entities,
        # Texts longer than the model's maximum, which the pipeline truncates.
        "too_long": [len(tokenizer(text)["input_ids"]) > limit if limit else False for text in texts],
        "load_average": os.getloadavg()[0],
    }
    with open(args.child_out, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


# ----------------------------------------------------------------------------------------------
# Parent: run the children, compare, print.
# ----------------------------------------------------------------------------------------------

def compare_entities(texts: list[str], ours: list[list], theirs: list[list], too_long: list[bool]) -> dict:
    """Where nerlib and the pipeline differ, on the texts the pipeline reads whole.

    Returns:
        `compared`, `same`, `skipped` (texts the pipeline truncates) and `differences`: for each
        differing text, its index, both entity lists as (type, text) and whether a pipeline entity
        starts or ends inside a word that nerlib keeps whole (`word_split`).
    """
    from nerlib.prediction import split_words

    differences, compared = [], 0
    for index, (text, mine, reference) in enumerate(zip(texts, ours, theirs)):
        if too_long[index]:
            continue
        compared += 1
        mine_spans = [tuple(e[:3]) for e in mine]
        their_spans = [tuple(e[:3]) for e in reference]
        if mine_spans == their_spans:
            continue
        words = split_words(text)
        split = any(start < point < end for _, s, e in their_spans for point in (s, e) for start, end in words)
        differences.append({"index": index, "nerlib": [(t, text[s:e]) for t, s, e in mine_spans],
                            "pipeline": [(t, text[s:e]) for t, s, e in their_spans], "word_split": split})
    return {"compared": compared, "same": compared - len(differences), "skipped": sum(too_long),
            "differences": differences}


def summarise(results: dict) -> dict:
    """Throughput ratios against the pipeline, and the targets met or not (None: not measured)."""
    base = results.get("pipeline", {}).get("words_per_s")
    ratios = {run: results[run]["words_per_s"] / base if base and run in results else None for run in RUNS[1:]}
    targets = {run: (ratios[run] >= goal if ratios[run] is not None else None) for run, goal in TARGETS.items()}
    return {"ratios": ratios, "targets": targets}


def read_parity(onnx_dir: str | None) -> dict | None:
    """The parity check the export recorded in the folder's nerlib_config.json, if any."""
    if not onnx_dir:
        return None
    try:
        with open(os.path.join(onnx_dir, "nerlib_config.json"), encoding="utf-8") as handle:
            return json.load(handle).get("export", {}).get("parity")
    except (OSError, ValueError):
        return None


def format_report(args, corpus: dict, results: dict, failed: dict, comparison: dict | None, parity: dict | None,
                  environment: dict) -> str:
    summary = summarise(results)
    lines = [f"inference on {corpus['texts_count']} texts ({corpus['words']} words) of {corpus['source']}, "
             f"{args.threads} threads, batch size {args.batch_size}; {environment['cpu']}, {environment['cpu_count']} "
             f"CPUs, load average {environment['load_average']:.1f} at the start",
             "",
             f"{'run':<24}{'words/s':>10}{'vs pipeline':>13}{'sentence p50/p99 ms':>22}{'2,000-word doc p50/p99 ms':>28}"]
    for run in args.runs:
        if run in failed:
            lines.append(f"{RUN_TITLES[run]:<24}{'failed (exit ' + str(failed[run]) + ')':>10}")
            continue
        result = results[run]
        ratio = summary["ratios"].get(run)
        sentence, document = result["sentence_ms"], result["document_ms"]
        doc = f"{document['p50']:.0f} / {document['p99']:.0f}" if document["n"] else "-"
        lines.append(f"{RUN_TITLES[run]:<24}{result['words_per_s']:>10.0f}"
                     f"{(f'{ratio:.2f}x' if ratio else '-'):>13}"
                     f"{sentence['p50']:>12.1f} / {sentence['p99']:<7.1f}{doc:>28}")
    for run, goal in TARGETS.items():
        met = summary["targets"][run]
        if met is not None:
            lines.append(f"target {RUN_TITLES[run]} >= {goal:g}x the pipeline's words/s: "
                         f"{'met' if met else 'missed'} ({summary['ratios'][run]:.2f}x)")
    if parity:
        rows = ", ".join(f"{row['name']} {row['f1']:.4f}" for row in parity["rows"])
        lines.append(f"parity recorded by the export ({parity['on']}): torch fp32 F1 {parity.get('torch_f1', 1.0):.4f}, "
                     f"{rows}")
    if comparison:
        lines += ["", f"entities, nerlib torch against the pipeline: the same on {comparison['same']} of "
                      f"{comparison['compared']} texts ({comparison['skipped']} texts skipped: longer than the "
                      f"model's maximum, which the pipeline truncates)"]
        splits = sum(d["word_split"] for d in comparison["differences"])
        if comparison["differences"]:
            lines.append(f"{len(comparison['differences'])} differ; in {splits} of them the pipeline cut a word that "
                         f"nerlib keeps whole:")
        for difference in comparison["differences"][:args.show_differences]:
            mark = " [word split]" if difference["word_split"] else ""
            lines.append(f"  text {difference['index']}{mark}: nerlib {difference['nerlib']} | "
                         f"pipeline {difference['pipeline']}")
        documents = comparison.get("documents")
        if documents:
            lines.append(f"2,000-word documents: nerlib found {documents['nerlib']} entities, the pipeline "
                         f"{documents['pipeline']} (it reads the first {documents['limit']} sub-tokens of each)")
    return "\n".join(lines)


def environment_info() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu": f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}", "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg()[0], "python": platform.python_version()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("model_dir", help="a model folder written by train.py")
    parser.add_argument("--onnx-dir", help="its export (nerlib export --onnx --int8), for the onnx runs")
    parser.add_argument("--data", default=DEFAULT_DATA, help="data source of the texts")
    parser.add_argument("--split", default="test")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--sentences", type=int, default=2000, help="sentences joined back into texts")
    parser.add_argument("--latency-requests", type=int, default=200, help="one-sentence requests timed one by one")
    parser.add_argument("--documents", type=int, default=10, help="2,000-word documents timed one by one")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every run")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per pipeline call; windows per nerlib batch")
    parser.add_argument("--runs", default=None, help=f"comma-separated, of {', '.join(RUNS)} (default: all that apply)")
    parser.add_argument("--show-differences", type=int, default=20, help="differing texts to show")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a run may take before it is stopped")
    parser.add_argument("--json-out", metavar="FILE", help="also write the figures and differences as JSON")
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default_runs = RUNS if args.onnx_dir else RUNS[:2]
    args.runs = [r.strip() for r in args.runs.split(",") if r.strip()] if args.runs else list(default_runs)
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown:
        parser.error(f"--runs: unknown run(s) {', '.join(unknown)}; expected some of {', '.join(RUNS)}")
    if any(r.startswith("onnx") for r in args.runs) and not args.onnx_dir:
        parser.error("--runs onnx and onnx-int8 need --onnx-dir (a folder written by nerlib export --onnx --int8)")
    for name in ("sentences", "threads", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    environment = environment_info()
    corpus = build_texts(args.data, args.split, args.lang, args.sentences, args.documents)
    results, failed = {}, {}
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="nerlib-inference-") as scratch:
        for run in args.runs:
            out = os.path.join(scratch, f"{run}.json")
            print(f"== {RUN_TITLES[run]} ==", file=sys.stderr, flush=True)
            command = [sys.executable, os.path.abspath(__file__), *argv, "--child", run, "--child-out", out]
            try:
                code = subprocess.run(command, env=env, stdout=sys.stderr, timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            if code != 0 or not os.path.isfile(out):
                failed[run] = code
                continue
            with open(out, encoding="utf-8") as handle:
                results[run] = json.load(handle)
    comparison = None
    if "torch" in results and "pipeline" in results:
        comparison = compare_entities(corpus["texts"], results["torch"]["entities"], results["pipeline"]["entities"],
                                      results["pipeline"]["too_long"])
        if corpus["documents"]:
            from transformers import AutoTokenizer

            comparison["documents"] = {
                "nerlib": sum(map(len, results["torch"]["document_entities"])),
                "pipeline": sum(map(len, results["pipeline"]["document_entities"])),
                "limit": AutoTokenizer.from_pretrained(args.model_dir).model_max_length}
    corpus["texts_count"] = len(corpus["texts"])
    parity = read_parity(args.onnx_dir)
    print(format_report(args, corpus, results, failed, comparison, parity, environment))
    if args.json_out:
        slim = {run: {k: v for k, v in result.items() if k not in ("entities", "document_entities", "too_long")}
                for run, result in results.items()}
        with open(args.json_out, "w", encoding="utf-8") as handle:
            json.dump({"settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
                       "environment": environment, "runs": slim, "failed": failed, "summary": summarise(results),
                       "comparison": comparison, "parity": parity}, handle, indent=2)
            handle.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
