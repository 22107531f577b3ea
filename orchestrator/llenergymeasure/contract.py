"""The environment and directory contract (defined once, in :mod:`llenergymeasure_contract.env`).

Re-exported here so host code keeps one import path; see the contract package for the names.
"""

from llenergymeasure_contract.env import (
    ENV_BASELINE_CACHE,
    ENV_COMPILE_CACHE_DIR,
    ENV_CONFIG_HASH,
    ENV_CONFIG_JSON,
    ENV_CONTRACT_VERSION,
    ENV_CYCLE,
    ENV_ENGINE_CACHE_DIR,
    ENV_HOST_GID,
    ENV_HOST_UID,
    ENV_IMAGE,
    ENV_IMAGE_DIGEST,
    ENV_IMAGE_LABELS_JSON,
    ENV_RESULTS_DIR,
    ENV_RUN_ID,
    ENV_STUDY_ID,
    HarnessEnv,
    check_contract_version,
)
from llenergymeasure_contract.files import (
    ERROR_FILE,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    REQUESTS_FILE,
    RESULT_FILE,
    TIMESERIES_FILE,
)

__all__ = [
    "ENV_BASELINE_CACHE",
    "ENV_COMPILE_CACHE_DIR",
    "ENV_CONFIG_HASH",
    "ENV_CONFIG_JSON",
    "ENV_CONTRACT_VERSION",
    "ENV_CYCLE",
    "ENV_ENGINE_CACHE_DIR",
    "ENV_HOST_GID",
    "ENV_HOST_UID",
    "ENV_IMAGE",
    "ENV_IMAGE_DIGEST",
    "ENV_IMAGE_LABELS_JSON",
    "ENV_RESULTS_DIR",
    "ENV_RUN_ID",
    "ENV_STUDY_ID",
    "ERROR_FILE",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "REQUESTS_FILE",
    "RESULT_FILE",
    "TIMESERIES_FILE",
    "HarnessEnv",
    "check_contract_version",
]
