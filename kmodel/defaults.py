"""Every default value kmodel has, in one place: the CLI's options, the Python API, the
composition config and the library functions all take them from here."""

from __future__ import annotations

#: rows per batch a model predicts at a time: bounds memory, whatever the input's size
BATCH_SIZE = 8192
#: rows per batch when the ensembler is applied: each batch reads one slab of every
#: prediction file, so larger batches mean fewer, larger reads (64 Ki rows x 20 models of
#: float32 is 5 MB)
COMPOSE_BATCH_SIZE = 1 << 16
#: the dataset in /targets that training and scoring use
TARGET_NAME = "y"
#: the example data's split (kmodel data, data: builtin:)
SEED = 0
TEST_FRACTION = 0.3
#: cross-fitting: folds of the train split (scikit-learn's StackingClassifier uses cv=5)
FOLDS = 5
#: where a composition's outputs go (RESULTS/NAME/...)
RESULTS = "results"
#: a progress line every this many seconds when stderr is not a terminal
PROGRESS_SECONDS = 5.0
#: memory (MB) a model's job asks of the scheduler when its spec's resources give none
MEM_MB = 1000
