"""Hugging Face hub ids -> local checkpoint folders, through `huggingface_hub` and its cache.

`resolve("gpt2")` gives the folder of the cached snapshot of the hub's `gpt2` (and
`resolve("gpt2@REV")`, or `resolve("gpt2", revision=REV)`, that of a branch, tag or commit),
downloading the files a checkpoint needs (config.json, the weights in one format, the
tokenizer's files) when it is not cached yet; a path that exists is returned as it is.
huggingface_hub reads its own settings from the environment: `HF_HUB_OFFLINE=1` reads the cache
only, `HF_HUB_CACHE` (or `HF_HOME`) moves the cache, `HF_TOKEN` logs in. Every failure is one
`CheckpointError` line that says what to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zoo.convert.common import CheckpointError

# What a checkpoint folder needs besides its weights: the config, the tokenizer's files in any
# of their forms (tokenizer.json; GPT-2's vocab.json + merges.txt; BERT's vocab.txt) and the
# settings that go with them (special tokens, lower-casing, the EOS id of generation).
CONFIG_FILES = ["config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                "vocab.txt"]
# The weights in one format: safetensors where the repository has them, else PyTorch's pickle
# (many repositories hold both, and TensorFlow, Flax or ONNX copies besides).
SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
PYTORCH_BIN = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]
# A string with one of these endings, or more than one "/", names a file, never a hub id.
_FILE_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".json")


def resolve(path_or_id: Path | str, revision: str | None = None) -> Path:
    """The local file or folder of a checkpoint: `path_or_id` itself when it exists, otherwise
    the snapshot of the Hugging Face hub id it names (`gpt2`, `owner/name`), at `revision`
    (a branch, tag or commit; default: the main branch), from the cache or downloaded into it.
    The revision may also end the id, after an @ (`EleutherAI/pythia-160m@step3000`, as
    huggingface_hub's file system writes it), so that one string names a checkpoint wherever
    the commands take one and wherever their records keep it. A folder without config.json
    that holds a model.pth (as `save_pretrained(..., format="official")` and `catalog export`
    write an official RWKV file, its tokenizer beside it) resolves to that file."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if revision is not None:
            raise CheckpointError(f"{path}: a revision ({revision!r}) applies to hub ids, "
                                  "not to a local file or folder")
        if path.is_dir() and not (path / "config.json").exists() and (
                path / "model.pth").is_file():
            return path / "model.pth"
        return path
    text = str(path_or_id)
    if isinstance(path_or_id, Path) or _names_a_file(text):
        raise CheckpointError(f"{text}: no such file or folder")
    if "@" in text:
        text, _, after = text.rpartition("@")
        if not after or not text:
            raise CheckpointError(f"{path_or_id}: an id@revision needs both, as in "
                                  "EleutherAI/pythia-160m@step3000")
        if revision is not None and revision != after:
            raise CheckpointError(f"{path_or_id}: names revision {after!r}, and {revision!r} "
                                  "was asked for besides")
        revision = after
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as exc:
        raise CheckpointError(f"{text}: no such file or folder, and not a Hugging Face hub id "
                              f"({_first_line(exc)})") from None
    return _snapshot(text, revision)


def _names_a_file(text: str) -> bool:
    return (text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1
            or text.endswith(_FILE_SUFFIXES))


def _snapshot(repo_id: str, revision: str | None) -> Path:
    """The snapshot folder of `repo_id` with a checkpoint's files (see the module's notes)."""
    from huggingface_hub import constants, errors, list_repo_files, snapshot_download

    # Read here, not at import: huggingface_hub sets them from the environment when imported.
    offline = bool(constants.HF_HUB_OFFLINE)
    cache = constants.HF_HUB_CACHE
    fetch = f"fetch it once online (HF_HUB_OFFLINE=0), or run `hf download {repo_id}`"
    # An interrupted download found offline (huggingface_hub >= 1.x); a LocalEntryNotFoundError.
    incomplete = getattr(errors, "IncompleteSnapshotError", ())
    # huggingface_hub logs each retry of an unreachable hub as a warning: the error raised
    # below says it once. (Set after the imports above: they set the logger's level.)
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(max(level, logging.ERROR))
    try:
        patterns = CONFIG_FILES + _weight_files(list_repo_files, repo_id, revision, offline)
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                       local_files_only=offline)
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: no revision {revision!r} on the Hugging Face "
                              "hub") from None
    except errors.GatedRepoError:  # before its parent class, RepositoryNotFoundError
        raise CheckpointError(f"{repo_id}: a gated repository; accept its terms on the hub's "
                              "page, then log in (`hf auth login` or HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such file or folder, nor a model on the Hugging "
                              "Face hub (if it is private: log in with `hf auth login` or "
                              "HF_TOKEN)") from None
    except incomplete:
        raise CheckpointError(f"{repo_id}: its snapshot in the Hugging Face cache ({cache}) "
                              f"misses files (an interrupted download?); {fetch}") from None
    except errors.LocalEntryNotFoundError as exc:
        if offline:
            raise CheckpointError(f"{repo_id}: no such file or folder, and not in the Hugging "
                                  f"Face cache ({cache}) while downloads are off "
                                  f"(HF_HUB_OFFLINE=1); {fetch}") from None
        raise CheckpointError(f"{repo_id}: no such file or folder, and not in the Hugging Face "
                              f"cache ({cache}) while the hub "
                              f"cannot be reached ({_first_line(exc)}); HF_HUB_OFFLINE=1 reads "
                              "the cache without trying the network") from None
    except (errors.HfHubHTTPError, errors.HFValidationError, OSError) as exc:
        raise CheckpointError(f"{repo_id}: {_first_line(exc)}") from None
    finally:
        hub_logger.setLevel(level)
    return Path(folder)


def _weight_files(list_repo_files, repo_id: str, revision: str | None,
                  offline: bool) -> list[str]:
    """The weight file patterns to fetch: one format, chosen from the repository's file list.
    Offline, or when the list cannot be had, both (snapshot_download then reads the cache, or
    says why it cannot reach the hub)."""
    if offline:
        return SAFETENSORS + PYTORCH_BIN
    try:
        files = set(list_repo_files(repo_id, revision=revision))
    except Exception:  # noqa: BLE001  (any failure: snapshot_download meets it again and says so)
        return SAFETENSORS + PYTORCH_BIN
    if files & {"model.safetensors", "model.safetensors.index.json"}:
        return SAFETENSORS
    return PYTORCH_BIN


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
