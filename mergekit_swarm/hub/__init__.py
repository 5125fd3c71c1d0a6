"""The Hugging Face Hub: models by repo id (`download`), and publishing a finished folder (`push`).

Part of the layer above `core` (with `pso` and `utilities`): it may import `core` only.
"""

from mergekit_swarm.hub.download import (
    TOKENIZER_FILES,
    HubError,
    HubModel,
    allowed_files,
    check_adapter_base,
    download,
    looks_like_repo_id,
)
from mergekit_swarm.hub.push import PushRequest, check_push_target, push, push_allow_list

__all__ = [
    "TOKENIZER_FILES",
    "HubError",
    "HubModel",
    "PushRequest",
    "allowed_files",
    "check_adapter_base",
    "check_push_target",
    "download",
    "looks_like_repo_id",
    "push",
    "push_allow_list",
]
