"""Typed experiment configuration: YAML in, validated once, passed explicitly.

:mod:`~fedlora.config.schema` says what a config holds; :mod:`~fedlora.config.loading` reads
files and ``--set`` overrides into it, with errors that name the key, file and line.
"""

from fedlora.config.loading import (
    DATA_ENV,
    build_config,
    dump_config,
    load_config,
    parse_overrides,
    resolve_data_dir,
)
from fedlora.config.schema import (
    AvailabilityConfig,
    ClientsConfig,
    ConfigError,
    ConstantSpeed,
    DataConfig,
    DegradeConfig,
    EvalConfig,
    ExperimentConfig,
    LognormalSpeed,
    LoraConfig,
    ModelConfig,
    NormalSpeed,
    ParetoSpeed,
    PartitionConfig,
    RandomInitConfig,
    RuntimeConfig,
    ServerConfig,
    StalenessConfig,
    TargetConfig,
    TrainConfig,
    UniformSpeed,
    ZipfSpeed,
)

__all__ = [
    "DATA_ENV",
    "AvailabilityConfig",
    "ClientsConfig",
    "ConfigError",
    "ConstantSpeed",
    "DataConfig",
    "DegradeConfig",
    "EvalConfig",
    "ExperimentConfig",
    "LognormalSpeed",
    "LoraConfig",
    "ModelConfig",
    "NormalSpeed",
    "ParetoSpeed",
    "PartitionConfig",
    "RandomInitConfig",
    "RuntimeConfig",
    "ServerConfig",
    "StalenessConfig",
    "TargetConfig",
    "TrainConfig",
    "UniformSpeed",
    "ZipfSpeed",
    "build_config",
    "dump_config",
    "load_config",
    "parse_overrides",
    "resolve_data_dir",
]
