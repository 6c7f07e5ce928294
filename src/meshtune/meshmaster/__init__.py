"""How Mesh Master talks to its model: the one prompt builder, the options it sends, its radio
chunks.

Every part of meshtune that speaks "as Mesh Master" (training data rendered for the bot, the
`meshmaster` eval profiles, the export proof, `meshtune prompt`) builds its request here, and
tests prove the result byte for byte against prompts recorded from the bot's own code
(../shared/real/mesh-master-golden-prompts.jsonl). Callers import from this package only:

    config.py    the bot's config.json keys and personas, the shipped values, the operator's files
    history.py   the bot's message log and the `Context:` built from it
    knowledge.py the Meshtastic knowledge file and the bot's retrieval (`/meshtastic`)
    request.py   the request for one incoming message (prompt string and options)
    radio.py     the reply's radio chunks

The facts come from Mesh Master (GPL-3.0); this package reimplements them, it copies no code.
"""

from meshtune.meshmaster.config import (
    DEFAULT_SYSTEM_PROMPT,
    FALLBACK_SYSTEM_PROMPT,
    FRUSTRATION_GUIDANCE,
    OPTIONS,
    SHIPPED,
    SYSTEM_PROMPT,
    TRAIL,
    BotConfig,
    Persona,
    load_config,
)
from meshtune.meshmaster.history import (
    AI_COMMANDS,
    COMMAND_MARKERS,
    DM_PLACEHOLDER,
    Line,
    load_history,
)
from meshtune.meshmaster.knowledge import (
    KNOWLEDGE_SYSTEM_PROMPT,
    NO_MATCH_REPLY,
    OWN_KNOWLEDGE,
    REFUSAL,
    Knowledge,
    load_knowledge,
    open_knowledge,
    own_knowledge,
    parse_knowledge,
)
from meshtune.meshmaster.radio import CHUNK_BYTES, MAX_CHUNKS, split_chunks
from meshtune.meshmaster.request import (
    KNOWLEDGE_COMMAND,
    Request,
    build_prompt,
    build_request,
    chat_prompt,
    question_of,
    reaches_model,
    reference_query,
    uses_knowledge,
)

__all__ = [
    "AI_COMMANDS",
    "CHUNK_BYTES",
    "COMMAND_MARKERS",
    "DEFAULT_SYSTEM_PROMPT",
    "DM_PLACEHOLDER",
    "FALLBACK_SYSTEM_PROMPT",
    "FRUSTRATION_GUIDANCE",
    "KNOWLEDGE_COMMAND",
    "KNOWLEDGE_SYSTEM_PROMPT",
    "MAX_CHUNKS",
    "NO_MATCH_REPLY",
    "OPTIONS",
    "OWN_KNOWLEDGE",
    "REFUSAL",
    "SHIPPED",
    "SYSTEM_PROMPT",
    "TRAIL",
    "BotConfig",
    "Knowledge",
    "Line",
    "Persona",
    "Request",
    "build_prompt",
    "build_request",
    "chat_prompt",
    "load_config",
    "load_history",
    "load_knowledge",
    "open_knowledge",
    "own_knowledge",
    "parse_knowledge",
    "question_of",
    "reaches_model",
    "reference_query",
    "split_chunks",
    "uses_knowledge",
]
