"""Errors a user can act on: printed as one line, without a traceback."""


class RunnerError(Exception):
    """A problem with the run's inputs or environment; the message says what to do."""


class ConfigError(RunnerError):
    """The composed configuration is invalid."""


class DatasetError(RunnerError):
    """The dataset folder, label file or an image is unusable."""


class WeightsError(RunnerError):
    """The checkpoint cannot be fetched, verified or loaded."""


class ModelFileError(RunnerError):
    """An ONNX (or converted) model file is corrupt or not a model."""


class ToolMissingError(RunnerError):
    """An external tool (atc, ais_bench, a CUDA runtime) is not installed."""


class ParityError(RunnerError):
    """The converted model's outputs differ from PyTorch's beyond the configured tolerance."""


class ResultFilesError(RunnerError):
    """A folder of per-image inference result files (ais_bench's layout) is unusable."""


class TrackingError(RunnerError):
    """The MLflow tracking store cannot be reached or written."""


class StorageError(RunnerError):
    """An output folder is full, read-only or otherwise not writable."""


class DeviceRuntimeError(RunnerError):
    """The device runtime (e.g. ais_bench on an NPU) failed to open or run the model."""


class MeasurementError(RunnerError):
    """A measurement does not meet the rule the run was asked to enforce (require_valid)."""
