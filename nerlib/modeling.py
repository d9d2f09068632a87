"""Model folders: loading tokenizers and `AutoModelForTokenClassification` models with errors a user
can act on, saving a trained model with its labels and configuration, and loading one for inference."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open

from .checkpoint import TEMPORARY_PREFIX, list_checkpoints, move_files_into, written_or_removed
from .config import BACKENDS, TrainConfig
from .devices import Precision, resolve_device, resolve_precision
from .errors import ConfigError, ModelError
from .labels import LabelSet, label_set_from_labels
from .onnx_backend import ONNX_FILE, OnnxTokenClassifier, is_exported, onnx_file
from .text import looks_like_hub_id

logger = logging.getLogger(__name__)

NERLIB_CONFIG_FILE = "nerlib_config.json"


def _check_source(name: str) -> None:
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ModelError(f"{name}: model folder has no config.json (expected a folder saved with save_pretrained)")
        return
    if os.path.exists(name):
        raise ModelError(f"{name}: is a file; --model takes a model folder or a hub model id")
    if not looks_like_hub_id(name):
        raise ModelError(f"{name}: model folder does not exist")


def _hub_error(name: str, exc: Exception) -> ModelError:
    if os.path.isdir(name):
        hint = "; pass --trust-remote-code if you trust it" if "trust_remote_code" in str(exc) else ""
        return ModelError(f"{name}: cannot load the model or tokenizer: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}{hint}")
    return ModelError(
        f"cannot load model {name!r}: not a local folder, and the Hugging Face hub is unreachable or has no such "
        f"model ({type(exc).__name__}); pass --model with a local model folder, (a folder written by "
        f"save_pretrained)"
    )


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """A fast tokenizer (word ids are needed for alignment)."""
    from transformers import AutoTokenizer

    _check_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as exc:  # hub, file and format errors all surface as one actionable line
        files = [file for file in _TOKENIZER_FILES if os.path.isfile(os.path.join(name, file))]
        if not files or "trust_remote_code" in str(exc):
            raise _hub_error(name, exc) from None
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
        raise ModelError(f"{name}: cannot load the tokenizer from {', '.join(files)} ({reason}); the model folder "
                         f"is damaged") from None
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
    from transformers import AutoConfig

    if not os.path.isdir(model_dir):
        raise ModelError(f"{model_dir}: model folder does not exist")
    backend = resolve_backend(model_dir, backend)
    if backend == "torch" and is_exported(model_dir) and not any(
            os.path.exists(os.path.join(model_dir, name)) for name in WEIGHTS_FILES):
        raise ModelError(f"{model_dir}: an exported ONNX folder holds no PyTorch weights; use --backend onnx")
    check_model_folder(model_dir, weights=backend == "torch")
    if backend == "torch" and int8:
        raise ConfigError("--int8 needs the onnx backend (a folder written by `nerlib export --onnx --int8`)")
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise _hub_error(model_dir, exc) from None
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    check_tokenizer_fits(model_dir, tokenizer, config)
    if backend == "onnx":
        path = onnx_file(model_dir, int8)
        if not os.path.isfile(path):
            raise ModelError(f"{model_dir}: no {os.path.basename(path)}; export with --int8 to write it")
        model = OnnxTokenClassifier(path, config, num_threads)
        check_onnx_outputs(model, config)
    else:
        model = _load_whole_model(model_dir, trust_remote_code)
    id2label = model.config.id2label
    labels = [id2label[i] for i in range(len(id2label))]
    info = read_nerlib_info(model_dir)
    if "labels" in info and info["labels"] != labels:
        raise ModelError(f"{os.path.join(model_dir, NERLIB_CONFIG_FILE)}: its labels are not config.json's id2label "
                         f"({len(info['labels'])} against {len(labels)}, or in another order); the folder mixes "
                         f"files of different models")
    label_set = label_set_from_labels(info.get("label_set", "model"), labels)
    if info.get("remap_multinerd"):
        label_set = LabelSet(label_set.name, label_set.labels, remap_multinerd=True)
    return tokenizer, model, label_set


def _load_whole_model(model_dir: str, trust_remote_code: bool):
    """The folder's token-classification model, refused unless every one of its weights came from the folder.

    transformers would fill a missing weight (a classifier head left out) with a fresh random
    one, or stop on a weight of another shape after a table of keys; either is one line here.

    Raises:
        ModelError: the model cannot be loaded, or a weight is missing or of another shape.
    """
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would repeat, in a table, what the error below says
    try:
        model, info = AutoModelForTokenClassification.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as exc:
        raise _hub_error(model_dir, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    weights = os.path.join(model_dir, next((name for name in WEIGHTS_FILES
                                            if os.path.isfile(os.path.join(model_dir, name))), WEIGHTS_FILES[0]))
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda item: item[0])
    if mismatched:
        key, saved, wanted = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise ModelError(f"{weights}: {key} has shape {tuple(saved)} but config.json makes it {tuple(wanted)}{more}; "
                         f"the weights are of another model (another label count?)")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelError(f"{weights}: no weights for {shown}; the model would run with them freshly initialised "
                         f"(a folder saved without its token-classification head?)")
    return model


def check_tokenizer_fits(model_dir: str, tokenizer, config) -> None:
    """The tokenizer is the folder's own and every id it gives has a row in the model's embeddings.

    transformers builds a tokenizer of special tokens alone when a folder has none of its
    tokenizer's files, so every word would become `[UNK]`; and an id past `vocab_size` indexes
    past the embedding matrix.

    Args:
        model_dir: the model folder.
        tokenizer: its tokenizer, as `load_tokenizer` loaded it.
        config: its transformers configuration.

    Raises:
        ModelError: no tokenizer file in the folder, or a tokenizer larger than the embeddings or with
            fewer than half their rows.
    """
    wanted = [name for name in getattr(tokenizer, "vocab_files_names", {}).values() if isinstance(name, str)]
    if wanted and not any(os.path.isfile(os.path.join(model_dir, name)) for name in wanted):
        raise ModelError(f"{model_dir}: no tokenizer files (none of {', '.join(wanted)}); the folder is incomplete "
                         f"(save the tokenizer with the model)")
    vocab_size = getattr(config, "vocab_size", None)
    ids = tokenizer.get_vocab().values()
    size = max(ids) + 1 if ids else 0
    if isinstance(vocab_size, int) and size > vocab_size:
        raise ModelError(f"{model_dir}: the tokenizer has ids up to {size - 1} but config.json's vocab_size is "
                         f"{vocab_size}; the tokenizer is not this model's")
    # Models round vocab_size up a little (to a multiple of 8 or 64); a tokenizer with under half the rows is
    # another model's, or a stand-in built from the special tokens alone.
    if isinstance(vocab_size, int) and size * 2 < vocab_size:
        raise ModelError(f"{model_dir}: the tokenizer has {size} ids but config.json's vocab_size is {vocab_size}; "
                         f"the tokenizer is not this model's")


def check_onnx_outputs(model: OnnxTokenClassifier, config) -> None:
    """The ONNX graph takes what nerlib feeds it and scores as many labels as config.json names.

    Raises:
        ModelError: other inputs or outputs, or another label count, naming the file.
    """
    inputs = {node.name for node in model.session.get_inputs()}
    outputs = {node.name: node.shape for node in model.session.get_outputs()}
    if not {"input_ids", "attention_mask"} <= inputs or "logits" not in outputs:
        raise ModelError(f"{model.path}: not a graph nerlib exported (it needs inputs input_ids and attention_mask "
                         f"and an output logits; it has {', '.join(sorted(inputs))} -> {', '.join(sorted(outputs))})")
    labels = outputs["logits"][-1] if outputs["logits"] else None
    if isinstance(labels, int) and labels != config.num_labels:
        raise ModelError(f"{model.path}: the graph scores {labels} labels but config.json names {config.num_labels}; "
                         f"the files are of different models")


def read_trained_config(model_dir: str) -> TrainConfig | None:
    """The configuration the model of `model_dir` was trained with; None for a folder nerlib did not train.

    Raises:
        ModelError: `nerlib_config.json` is damaged, or its configuration is not one this nerlib reads.
    """
    values = read_nerlib_info(model_dir).get("config")
    if not values:
        return None
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:  # options of a later nerlib: what this one needs to run the model is all there
        logger.warning("%s: ignoring option(s) this nerlib does not know: %s",
                       os.path.join(model_dir, NERLIB_CONFIG_FILE), ", ".join(unknown))
        values = {key: value for key, value in values.items() if key in known}
    try:
        return TrainConfig.from_dict(values)
    except (ConfigError, TypeError) as exc:
        raise ModelError(f"{os.path.join(model_dir, NERLIB_CONFIG_FILE)}: not a configuration this nerlib reads "
                         f"({exc}); the model folder is damaged or from another version") from None


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
# The files a tokenizer is read from, named when it cannot be.
_TOKENIZER_FILES = _TOKENIZER_JSON_FILES + ("vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                                            "sentencepiece.bpe.model", "tokenizer.model")


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
        _check_label_maps(config, config_path)
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


def _check_label_maps(config: dict, path: str) -> None:
    """Labels named once each; `label2id` the inverse of `id2label`; `num_labels`, if written, their count.

    transformers itself would let a `num_labels` that disagrees replace the labels with LABEL_0...
    and a label named twice make two tags print the same name.
    """
    id2label = {int(key): label for key, label in config["id2label"].items()}
    seen: dict[str, int] = {}
    for label_id in sorted(id2label):
        label = id2label[label_id]
        if label in seen:
            raise ModelError(f"{path}: id2label names {label!r} twice (ids {seen[label]} and {label_id}); "
                             f"each label must be named once")
        seen[label] = label_id
    if "num_labels" in config and config["num_labels"] != len(id2label):
        raise ModelError(f"{path}: num_labels is {config['num_labels']!r} but id2label names {len(id2label)} labels")
    label2id = config.get("label2id")
    if label2id is None:
        return
    if not isinstance(label2id, dict):
        raise ModelError(f"{path}: label2id must be an object of label names to ids")
    for label, label_id in label2id.items():
        if label not in seen:
            raise ModelError(f"{path}: label2id has {label!r}, which id2label does not name")
        if not isinstance(label_id, int) or isinstance(label_id, bool) or seen[label] != label_id:
            raise ModelError(f"{path}: label2id[{label!r}] is {label_id!r} but id2label gives it id {seen[label]}")
    absent = [label for label in seen if label not in label2id]
    if absent:
        raise ModelError(f"{path}: label2id lacks {', '.join(map(repr, absent[:5]))}, named by id2label")


def pad_token_id(tokenizer) -> int:
    """The id that pads windows: the tokenizer's padding token, else 0 (the padded positions are masked)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def effective_max_length(requested: int, tokenizer, model) -> int:
    """The window size: what was asked, capped by the model's position embeddings."""
    limits = [requested]
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        limits.append(int(positions))
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit and tokenizer_limit < 1_000_000:
        limits.append(int(tokenizer_limit))
    return min(limits)


def save_model(model, tokenizer, output_dir: str, config: TrainConfig, label_set: LabelSet) -> None:
    """The model with `id2label`, its tokenizer, and nerlib's configuration beside them.

    Everything is written into a temporary folder first and moved into `output_dir` once complete,
    so a failed write leaves the model saved before (an earlier epoch's) as it was.

    Raises:
        SaveError: a file could not be written (a full disk); the temporary folder is removed.
    """
    info = {
        "label_set": label_set.name,
        "labels": list(label_set.labels),
        "remap_multinerd": label_set.remap_multinerd,
        "config": config.to_dict(),
    }
    temporary = os.path.join(output_dir, f"{TEMPORARY_PREFIX}model-{os.getpid()}")

    def failed(reason: str) -> str:
        last = list_checkpoints(output_dir)
        return (f"{output_dir}: cannot save the model ({reason}); removed the partial {temporary}; the model saved "
                f"before, if any, is as it was" + (f"; the last complete checkpoint is {last[-1]}" if last else ""))

    with written_or_removed(temporary, failed):
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        with open(os.path.join(temporary, NERLIB_CONFIG_FILE), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=2)
            handle.write("\n")
        move_files_into(temporary, output_dir)


@dataclass(frozen=True)
class InferenceModel:
    """A saved model loaded to predict with, and how to run it.

    Attributes:
        tokenizer, model, label_set: as `load_trained` returns them; the model is on `device`.
        trained: the configuration it was trained with (None for a folder nerlib did not train).
        max_length: the window size in sub-tokens.
        device, precision: where and in which precision the forward passes run.
        backend: `torch` or `onnx`.
    """

    tokenizer: object
    model: object
    label_set: LabelSet
    trained: TrainConfig | None
    max_length: int
    device: torch.device
    precision: Precision
    backend: str

    @property
    def pad_id(self) -> int:
        return pad_token_id(self.tokenizer)


def load_for_inference(model_dir: str, device: str = "auto", amp: bool = False, amp_dtype: str = "auto",
                       max_length: int | None = None, backend: str = "auto", int8: bool = False,
                       trust_remote_code: bool = False, num_threads: int | None = None) -> InferenceModel:
    """Load a saved model folder to predict with: what `evaluate`, `predict` and the service share.

    Args:
        model_dir: a folder written by `nerlib.train` (or any token-classification model folder),
            or by `nerlib export --onnx`.
        device: auto (CUDA when present; the CPU for the onnx backend), cpu, cuda or cuda:N.
        amp, amp_dtype: mixed-precision inference, as for training (torch backend only).
        max_length: window size in sub-tokens; None: the training one (else 512), capped by the model.
        backend, int8: `torch`, `onnx` or `auto`, and with onnx whether to run its int8 model.
        trust_remote_code: allow model code from the folder (torch backend).
        num_threads: ONNX Runtime's threads (onnx backend); None: as many as torch uses.

    Raises:
        NerlibError: the folder is missing or damaged, a bad device or backend, or `amp` with the
            onnx backend.
    """
    device_ = resolve_device(backend_device(model_dir, backend, device, amp))
    tokenizer, model, label_set = load_trained(model_dir, trust_remote_code, backend, int8, num_threads)
    precision = resolve_precision(device_, amp, amp_dtype)
    model.to(device_)
    trained = read_trained_config(model_dir)
    window = effective_max_length(max_length or (trained.max_length if trained else 512), tokenizer, model)
    used = "onnx" if isinstance(model, OnnxTokenClassifier) else "torch"
    return InferenceModel(tokenizer, model, label_set, trained, window, device_, precision, used)
