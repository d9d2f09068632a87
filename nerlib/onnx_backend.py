"""ONNX: export a token-classification model with `torch.onnx`, quantise it, run it with ONNX Runtime.

An exported folder holds `model.onnx` (fp32), optionally `model_int8.onnx` (dynamically
quantised weights), the tokenizer, the model's `config.json` (labels) and `nerlib_config.json`.
`OnnxTokenClassifier` runs such a file behind the call that nerlib's inference makes of a
PyTorch model, `model(input_ids=..., attention_mask=...).logits`, so the word splitting,
windowing and word-level aggregation stay the ones of `nerlib.evaluation.predict_windows`.

onnx, onnxruntime and onnxscript are the optional extra `nerlib[onnx]`; they are imported when
first needed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import numpy as np
import torch

from .errors import ConfigError, ModelError, import_optional

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
EXTRA = "onnx"

# Protobuf files cannot exceed 2 GiB: larger models keep their weights in a side file.
_EXTERNAL_DATA_BYTES = 1 << 30


def onnx_file(model_dir: str, int8: bool = False) -> str:
    """The path of the fp32 or int8 ONNX model of an exported folder."""
    return os.path.join(model_dir, INT8_FILE if int8 else ONNX_FILE)


def is_exported(model_dir: str) -> bool:
    """True for a folder written by `nerlib export --onnx`."""
    return os.path.isfile(onnx_file(model_dir))


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Silence a converter's notes and warnings (deprecations inside torch, optional torchvision ops,
    the quantizer's list of skipped tensors, logged on the root logger): they say nothing to a user."""
    chatty = logging.getLogger(logger_name)
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        chatty.setLevel(level)


def export_onnx(model: torch.nn.Module, path: str, opset: int | None = None) -> None:
    """Export a token-classification model to ONNX with dynamic batch and sequence axes.

    The graph takes `input_ids` and `attention_mask` (int64, `(batch, sequence)`) and returns
    `logits` (`(batch, sequence, num_labels)`), as nerlib calls the PyTorch model: other inputs
    such as `token_type_ids` keep the model's defaults (zeros).

    Args:
        model: the model, in fp32 on the CPU.
        path: where to write the `.onnx` file.
        opset: the ONNX opset; None for the exporter's recommended one.

    Raises:
        MissingExtra: onnx or onnxscript is not installed.
        ModelError: the exporter cannot convert the model.
    """
    for module in ("onnx", "onnxscript"):
        import_optional(module, EXTRA, "ONNX export")
    was_training = model.training
    model.eval()
    positions = getattr(model.config, "max_position_embeddings", None)
    batch = torch.export.Dim("batch", min=1)
    sequence = torch.export.Dim("sequence", min=1, max=int(positions) if positions else None)
    # Example inputs: any ids of the vocabulary; a size above 1 keeps the axes from being specialised.
    example = {"input_ids": torch.full((2, 8), 1, dtype=torch.long),
               "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    try:
        with _quiet("torch.onnx"):
            program = torch.onnx.export(model, (), kwargs=example, dynamo=True, opset_version=opset,
                                        input_names=["input_ids", "attention_mask"], output_names=["logits"],
                                        dynamic_shapes={"input_ids": {0: batch, 1: sequence},
                                                        "attention_mask": {0: batch, 1: sequence}},
                                        verbose=False)
            large = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
            program.save(path, external_data=large)
    except Exception as exc:  # the exporter's errors are many and deep; the user needs the first line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelError(f"cannot export {type(model).__name__} to ONNX: {type(exc).__name__}: {first_line}") from None
    finally:
        model.train(was_training)


def quantize_int8(source: str, target: str) -> None:
    """Dynamically quantise an ONNX model's weights to int8 (activations quantised at run time).

    Uses ONNX Runtime's quantizer (`quantize_dynamic`) on the MatMul and Gemm weights.

    Raises:
        MissingExtra: onnxruntime is not installed.
    """
    import_optional("onnxruntime", EXTRA, "int8 quantisation")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    large = os.path.getsize(source) > _EXTERNAL_DATA_BYTES or os.path.exists(source + ".data")
    with _quiet(""):
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=large)


class OnnxTokenClassifier:
    """An ONNX token-classification model run by ONNX Runtime, called like the PyTorch model.

    `model(input_ids=..., attention_mask=...)` returns an object with `.logits`, a float32 CPU
    tensor `(batch, sequence, num_labels)`; `config` is the model's transformers configuration.
    One session serves every call; ONNX Runtime divides its `num_threads` itself.
    """

    training = False

    def __init__(self, path: str, config, num_threads: int | None = None):
        """
        Args:
            path: the `.onnx` file.
            config: the model's `transformers` configuration (labels, position limit).
            num_threads: ONNX Runtime's intra-op threads; None: as many as torch uses.

        Raises:
            MissingExtra: onnxruntime is not installed.
            ModelError: the file cannot be loaded.
        """
        ort = import_optional("onnxruntime", EXTRA, "the onnx backend")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its graph-optimisation notes mean nothing to a user
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelError(f"{path}: cannot load the ONNX model: {first_line}") from None
        self.path = path
        self.config = config
        self.num_threads = options.intra_op_num_threads

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        from transformers.modeling_outputs import TokenClassifierOutput

        ids = input_ids.numpy()
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.numpy()
        (logits,) = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        return TokenClassifierOutput(logits=torch.from_numpy(logits))  # (batch, seq, num_labels)

    # What inference asks of a PyTorch model.
    def eval(self) -> "OnnxTokenClassifier":
        return self

    def train(self, mode: bool = True) -> "OnnxTokenClassifier":
        if mode:
            raise RuntimeError("an ONNX model cannot be trained")
        return self

    def to(self, device: torch.device | str) -> "OnnxTokenClassifier":
        if torch.device(device).type != "cpu":
            raise ConfigError(f"--device {device}: the onnx backend runs on CPUs; use --backend torch on {device}")
        return self
