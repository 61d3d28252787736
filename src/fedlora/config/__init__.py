"""Typed experiment configuration: YAML in, validated once, passed explicitly.

:mod:`~fedlora.config.schema` says what a config holds (each section in the module of its
topic); :mod:`~fedlora.config.loading` reads files and ``--set`` overrides into it, with errors
that name the key, file and line.
"""

from fedlora.config.clients import (
    AvailabilityConfig,
    ClientsConfig,
    ConstantSpeed,
    LognormalSpeed,
    NormalSpeed,
    ParetoSpeed,
    SpeedConfig,
    UniformSpeed,
    ZipfSpeed,
)
from fedlora.config.data import DataConfig, DegradeConfig, InstructConfig, PartitionConfig
from fedlora.config.evaluation import EvalConfig, TargetConfig
from fedlora.config.loading import (
    DATA_ENV,
    build_config,
    dump_config,
    load_config,
    parse_overrides,
    read_yaml,
    resolve_data_dir,
    setup_error,
    unreadable,
    with_resolved_data_dir,
)
from fedlora.config.schema import ExperimentConfig, RuntimeConfig
from fedlora.config.section import ConfigError
from fedlora.config.server import ServerConfig, StalenessConfig
from fedlora.config.training import LoraConfig, ModelConfig, RandomInitConfig, TrainConfig

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
    "InstructConfig",
    "LognormalSpeed",
    "LoraConfig",
    "ModelConfig",
    "NormalSpeed",
    "ParetoSpeed",
    "PartitionConfig",
    "RandomInitConfig",
    "RuntimeConfig",
    "ServerConfig",
    "SpeedConfig",
    "StalenessConfig",
    "TargetConfig",
    "TrainConfig",
    "UniformSpeed",
    "ZipfSpeed",
    "build_config",
    "dump_config",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "resolve_data_dir",
    "setup_error",
    "unreadable",
    "with_resolved_data_dir",
]
