"""Whether the Hugging Face Hub can be reached (used by the model and face-detector downloads)."""


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub endpoint cannot be reached right now, or ``None`` when it can.

    A quick TCP connection to the endpoint's host, so that a machine without network fails at
    once with a clear error instead of sitting through huggingface_hub's retries.
    """
    import socket
    import urllib.parse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    url = urllib.parse.urlparse(constants.ENDPOINT)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return f"{host}:{port} is not reachable ({err})"
    return None
