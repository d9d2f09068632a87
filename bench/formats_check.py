#!/usr/bin/env python
"""The same real sentences in four formats, trained on alike: does the format change anything?

    python bench/formats_check.py --conll-train conll2003/train.txt --conll-val conll2003/val.txt \\
        --model MODEL_DIR --train-sentences 2000 --work-dir /tmp/formats

Reads a BIO column file (token TAB tag, a blank line between sentences, as CoNLL-2003 is
commonly shared) and writes the same sentences four ways, each a folder `train.* / val.* /
test.*`:

* `bio-tsv`: token TAB tag, BIO;
* `iob1-conll`: CoNLL-2003's own four columns (token, POS, chunk, tag) in IOB1, where B- appears
  only between two touching entities of one type, with `-DOCSTART-` lines every 50 sentences;
* `bioes-tsv`: token TAB tag, BIOES (S- a one-word entity, E- the last word of a longer one);
* `spans`: character-span JSON lines, `{"text", "entities": [{"start", "end", "label"}]}`, the
  words joined with single spaces.

The IOB1, BIOES and span encoders here are written from the schemes' definitions, not taken from
nerlib, so that nerlib's readers are checked against an independent writer. Then `train.py
--labels auto` trains on each folder with the same seed and settings, and the test metrics and
the test split's entity counts per type are printed side by side. The three token formats must
give identical metrics; the span form re-cuts its text into words, so its entity counts must
match and its F1 lie within a point.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("bio-tsv", "iob1-conll", "bioes-tsv", "spans")
DOCUMENT_SENTENCES = 50


def read_bio_columns(path: str) -> list[tuple[list[str], list[str]]]:
    """Sentences of a token TAB tag file (BIO), blank lines between them."""
    sentences, tokens, tags = [], [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if not line.strip():
                if tokens:
                    sentences.append((tokens, tags))
                tokens, tags = [], []
                continue
            token, tag = line.split("\t")
            tokens.append(token)
            tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def spans_of(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, end word) of each BIO entity; an I- after another type opens one."""
    spans, current = [], None
    for index, tag in enumerate(tags + ["O"]):
        kind = tag[2:] if tag != "O" else None
        continues = current is not None and tag.startswith("I-") and kind == current[0]
        if current is not None and not continues:
            spans.append((current[0], current[1], index))
            current = None
        if kind is not None and not continues:
            current = (kind, index)
    return spans


def iob1_tags(length: int, spans) -> list[str]:
    tags = ["O"] * length
    ends = {}
    for kind, first, end in spans:
        touching = ends.get(first) == kind  # an entity of the same type ends right before this one
        for index in range(first, end):
            tags[index] = f"I-{kind}"
        if touching:
            tags[first] = f"B-{kind}"
        ends[end] = kind
    return tags


def bioes_tags(length: int, spans) -> list[str]:
    tags = ["O"] * length
    for kind, first, end in spans:
        if end - first == 1:
            tags[first] = f"S-{kind}"
            continue
        tags[first] = f"B-{kind}"
        for index in range(first + 1, end - 1):
            tags[index] = f"I-{kind}"
        tags[end - 1] = f"E-{kind}"
    return tags


def write_split(folder: str, form: str, split: str, sentences) -> None:
    os.makedirs(folder, exist_ok=True)
    name = {"bio-tsv": f"{split}.tsv", "iob1-conll": f"{split}.conll", "bioes-tsv": f"{split}.bioes",
            "spans": f"{split}.jsonl"}[form]
    with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
        for number, (tokens, tags) in enumerate(sentences):
            spans = spans_of(tags)
            if form == "spans":
                starts, offset = [], 0
                for token in tokens:
                    starts.append(offset)
                    offset += len(token) + 1
                entities = [{"start": starts[first], "end": starts[end - 1] + len(tokens[end - 1]), "label": kind}
                            for kind, first, end in spans]
                handle.write(json.dumps({"text": " ".join(tokens), "entities": entities}, ensure_ascii=False) + "\n")
                continue
            if form == "iob1-conll":
                if number % DOCUMENT_SENTENCES == 0:
                    handle.write("-DOCSTART- -X- -X- O\n\n")
                for token, tag in zip(tokens, iob1_tags(len(tokens), spans)):
                    handle.write(f"{token} NNP I-NP {tag}\n")
            else:
                written = tags if form == "bio-tsv" else bioes_tags(len(tokens), spans)
                for token, tag in zip(tokens, written):
                    handle.write(f"{token}\t{tag}\n")
            handle.write("\n")


def entity_counts(sentences) -> dict[str, int]:
    return dict(sorted(Counter(kind for _, tags in sentences for kind, _, _ in spans_of(tags)).items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conll-train", required=True, help="BIO column file the train split is cut from")
    parser.add_argument("--conll-val", required=True, help="BIO column file the val and test splits are cut from")
    parser.add_argument("--model", required=True, help="encoder folder or hub id")
    parser.add_argument("--train-sentences", type=int, default=2000)
    parser.add_argument("--val-sentences", type=int, default=500, help="the first ones of --conll-val; the rest is test")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--train-flags", default="--epochs 1 --lr 2e-4 --batch-size 16 --seed 7 --no-progress",
                        help="the same for every format")
    args = parser.parse_args()

    splits = {"train": read_bio_columns(args.conll_train)[:args.train_sentences]}
    held_out = read_bio_columns(args.conll_val)
    splits["val"], splits["test"] = held_out[:args.val_sentences], held_out[args.val_sentences:]
    print({split: len(sentences) for split, sentences in splits.items()}, "sentences;",
          "test entities:", entity_counts(splits["test"]), flush=True)

    results = {}
    for form in args.formats.split(","):
        data = os.path.join(args.work_dir, "data", form)
        for split, sentences in splits.items():
            write_split(data, form, split, sentences)
        out = os.path.join(args.work_dir, "runs", form)
        command = [sys.executable, os.path.join(REPO_ROOT, "train.py"), "--labels", "auto", "--data", data,
                   "--model", args.model, "--output-dir", out, "--overwrite", *args.train_flags.split()]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "metrics.json"), encoding="utf-8") as handle:
            results[form] = json.load(handle)["test"]

    print(f"\n{'format':<12} {'test F1':>9} {'precision':>10} {'recall':>8}  entities per type (gold, test split)")
    for form, test in results.items():
        support = {kind: row["support"] for kind, row in sorted(test["per_type"].items())}
        print(f"{form:<12} {test['f1']:>9.4f} {test['precision']:>10.4f} {test['recall']:>8.4f}  {support}")
    token_forms = [form for form in ("bio-tsv", "iob1-conll", "bioes-tsv") if form in results]
    identical = all(results[form] == results[token_forms[0]] for form in token_forms)
    print(f"\ntoken formats ({', '.join(token_forms)}): test metrics {'identical' if identical else 'DIFFER'}")
    if "spans" in results and token_forms:
        base, spans = results[token_forms[0]], results["spans"]
        same_counts = ({k: r["support"] for k, r in base["per_type"].items()}
                       == {k: r["support"] for k, r in spans["per_type"].items()})
        print(f"spans: entity counts per type {'the same' if same_counts else 'DIFFER'}; "
              f"F1 {spans['f1']:.4f} against {base['f1']:.4f} ({100 * (spans['f1'] - base['f1']):+.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
