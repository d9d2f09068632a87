"""nerlib: fine-tune a pre-trained transformer for named entity recognition with plain PyTorch.

    import nerlib
    metrics = nerlib.train(nerlib.TrainConfig(labels="five", data="path/to/multinerd", model="path/to/encoder"))
    scores = nerlib.evaluate("runs/nerlib", split="test")
    entities = nerlib.predict("runs/nerlib", ["Angela Merkel visited Paris."])
"""

from .analysis import analyse
from .config import TrainConfig
from .convert import convert
from .data import Sentence, Split, load_split
from .errors import ConfigError, DataError, ModelError, NerlibError
from .evaluation import error_report, evaluate
from .labels import FIVE_CLASSES, MULTINERD_CLASSES, MULTINERD_TAGS, LabelSet, auto_label_set, multinerd_label_set
from .loop import train
from .prediction import Entity, predict, split_words
from .scoring import compute_metrics
from .version import __version__

__all__ = [
    "TrainConfig", "train", "evaluate", "error_report", "analyse", "predict", "convert", "Entity", "split_words", "compute_metrics", "load_split", "Sentence", "Split",
    "LabelSet", "multinerd_label_set", "auto_label_set", "MULTINERD_TAGS", "MULTINERD_CLASSES", "FIVE_CLASSES",
    "NerlibError", "DataError", "ConfigError", "ModelError", "__version__",
]
