"""How the bot sends a reply over the radio: chunks of at most `chunk_size` bytes."""

CHUNK_BYTES = 160  # chunk_size in the shipped config
MAX_CHUNKS = 5


def split_chunks(text: str, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Split a reply into radio chunks of at most `chunk_bytes` UTF-8 bytes, as the bot does.

    The bot prefers a word break within the last 30 characters of a chunk.
    """
    chunks: list[str] = []
    rest = text
    while rest:
        if len(rest.encode()) <= chunk_bytes:
            chunks.append(rest)
            break
        cut = len(rest.encode()[:chunk_bytes].decode(errors="ignore"))
        space = rest.rfind(" ", max(0, cut - 30), cut)
        if space > 0:
            cut = space
        chunks.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return chunks
