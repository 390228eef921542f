"""The Hugging Face Hub, asked briefly: is it reachable, and can a named model be loaded here?

A Hub name that cannot be had must fail before any folder is written, in one line that says what to
do, not after the arms start (each would fail on its own and leave an empty report behind).
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from harness import UserError

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers at all; False at once in offline mode."""
    import huggingface_hub.constants
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(huggingface_hub.constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def cached(name: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(name, filename), str)


def check_hub_model(name: str, timeout: float = 5.0) -> None:
    """A Hub model name whose config and tokenizer are in the local cache, or on a Hub that answers."""
    if cached(name, CONFIG_FILE) and any(cached(name, f) for f in TOKENIZER_FILES):
        return
    fix = f"download it where the Hub is reachable (hf download {name}) or give a local folder"
    if not hub_reachable(timeout):
        import huggingface_hub.constants
        why = "HF_HUB_OFFLINE is set" if huggingface_hub.constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise UserError(f"model '{name}' is not in the local Hugging Face cache and {why}; {fix}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    try:
        info = HfApi().model_info(name, timeout=timeout)
    except GatedRepoError:
        raise UserError(f"model '{name}' is gated: accept its terms on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise UserError(f"no model '{name}' on the Hugging Face Hub (a private one needs hf auth login); "
                        "check the name, or give a local folder") from None
    except Exception as err:  # a timeout or a refused connection half-way
        raise UserError(f"could not ask the Hub about model '{name}' ({type(err).__name__}); {fix}") from None
    files = {s.rfilename for s in info.siblings or []}
    if CONFIG_FILE not in files:
        raise UserError(f"model '{name}' on the Hub has no config.json: not a transformers model")
    if not files & set(TOKENIZER_FILES):
        raise UserError(f"model '{name}' on the Hub has no tokenizer files; give a model that ships its tokenizer")
