"""The one resolver that turns a model name on the command line into something loadable, and
the local model cache that `llmkit pull` fills.

Order (the house plan): a path to an HF directory or a ``.gguf`` file; a run directory (its
``model/``); a name in the local model cache (``$LLMKIT_HOME``, default ``~/.cache/llmkit``);
an ``http(s)://…/v1`` URL of an OpenAI-compatible server.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    pass


def llmkit_home() -> Path:
    return Path(os.environ.get("LLMKIT_HOME") or Path.home() / ".cache" / "llmkit")


def models_dir() -> Path:
    return llmkit_home() / "models"


def cache_name(repo_id: str) -> str:
    """Folder name of a hub repo id in the cache: ``Qwen/Qwen2.5-0.5B`` -> ``Qwen--Qwen2.5-0.5B``."""
    return repo_id.strip("/").replace("/", "--")


def cached_models() -> list[str]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name.replace("--", "/") for p in root.iterdir() if (p / "config.json").exists())


def is_url(name: str) -> bool:
    return bool(re.match(r"^https?://", name))


def _is_hf_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").exists()


def resolve_model(name: str | os.PathLike) -> Path | str:
    """A local path to an HF directory or .gguf file, or the URL string for a remote server."""
    text = str(name)
    if is_url(text):
        return text
    p = Path(text).expanduser()
    if p.exists():
        if p.is_file() and p.suffix == ".gguf":
            return p
        if _is_hf_dir(p):
            return p
        if _is_hf_dir(p / "model"):
            return p / "model"  # a run directory
        if p.is_dir():
            raise ModelNotFoundError(
                f"{p} is a directory but neither a Hugging Face model (no config.json) nor a run directory "
                f"(no model/config.json)"
            )
        raise ModelNotFoundError(f"{p} is a file but not a .gguf model: give a model directory or a .gguf file")
    cached = models_dir() / cache_name(text)
    if _is_hf_dir(cached):
        return cached
    known = cached_models()
    hint = f" Cached models: {', '.join(known)}." if known else " The model cache is empty."
    raise ModelNotFoundError(
        f"cannot find model {text!r}: it is not a path, not a run directory, and not in the model cache "
        f"({models_dir()}).{hint} Fetch it with `llmkit pull {text}`, or make one with `llmkit init`."
    )


def pull(repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """Download a Hugging Face hub repo's model files (safetensors, configs, tokenizer) into the
    model cache with huggingface_hub, and return the local directory."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError as e:  # the `hub` extra
        raise RuntimeError("pulling from the hub needs huggingface_hub: pip install 'llmkit[hub]'") from e
    target = models_dir() / cache_name(repo_id)
    patterns = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]
    try:
        path = snapshot_download(repo_id, revision=revision, token=token, local_dir=target, allow_patterns=patterns)
    except HfHubHTTPError as e:
        raise ModelNotFoundError(f"the hub refused {repo_id!r}: {e}") from e
    except Exception as e:  # offline: connection errors, timeouts, offline mode
        raise ConnectionError(
            f"cannot download {repo_id!r}: the Hugging Face hub is not reachable from this machine ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Copy the model directory here by other means and pass "
            "its path with --model, or run `llmkit pull` where the hub is reachable."
        ) from e
    return Path(path)
