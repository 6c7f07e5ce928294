"""Training conversations sent as Mesh Master's request.

The dataset stores plain conversations; a recipe's `mesh_master:` key renders a share of them
at load time through the one prompt builder (meshmaster.chat_prompt), deterministically from
the seed, so the model is trained on the exact request the bot sends, as Ollama cuts it to the
config's num_ctx (meshmaster.truncation):

    [system: deployment prompt] [user: the bot's prompt string] [assistant: the last reply]

A DM's Context is the bot's placeholder lines; a channel thread (`"channel": true` in the row)
keeps its words. The rest stay plain chats, as `ollama run` and other clients send them.
"""

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from meshtune import meshmaster
from meshtune.data import Conversation, Message
from meshtune.recipe import MeshMasterRequests

# The rendered row's num_ctx: training cuts its prompt as Ollama will (train.examples).
NUM_CTX_KEY = "num_ctx"


def renderable(conv: Conversation) -> bool:
    """Whether to send this conversation as the bot's request: no system turn of its own (the
    bot has none), a last message that reaches the model (a slash command is run instead), and
    not a multi-turn DM. In a DM the bot shows only placeholders for the earlier turns, so a
    last reply that builds on them would teach the model to guess what it cannot see; those
    rows stay plain chats, and the data's follow-up rows teach asking back instead. A
    `/meshtastic` question and its reference-mode follow-ups are sent with the excerpts of
    meshtune's own knowledge file."""
    turns = conv.messages
    if len(turns) < 2 or turns[0].role == "system":
        return False
    if _knowledge(conv):
        return True
    multi_turn_dm = sum(m.role == "user" for m in turns) > 1 and not conv.channel
    return meshmaster.reaches_model(turns[-2].content) and not multi_turn_dm


def _knowledge(conv: Conversation) -> bool:
    """Answered from the knowledge file: `/meshtastic QUESTION`, or a follow-up in the
    reference mode it starts (the excerpts, not the earlier words, carry the answer)."""
    *earlier, last = [m.content for m in conv.messages[:-1] if m.role == "user"]
    history = [meshmaster.Line("K7QX", text) for text in earlier]
    return meshmaster.uses_knowledge(last, history, "K7QX", conv.channel)


def render(
    convs: Sequence[Conversation], spec: MeshMasterRequests | None, seed: int
) -> list[Conversation]:
    """`spec.share` of the renderable conversations (chosen by `seed`) as the bot's request."""
    if spec is None or spec.share == 0:
        return list(convs)
    config = meshmaster.load_config(
        Path(spec.config) if spec.config else None,
        Path(spec.personas_file) if spec.personas_file else None,
    )
    personas = [config.persona(p).id for p in spec.personas] or [config.persona().id]
    rng = random.Random(seed)
    candidates = [i for i, c in enumerate(convs) if renderable(c)]
    chosen = set(rng.sample(candidates, round(spec.share * len(candidates))))
    out = []
    for i, conv in enumerate(convs):
        if i not in chosen:
            out.append(conv)
            continue
        persona, sender = rng.choice(personas), rng.choice(spec.senders)
        prompt = meshmaster.chat_prompt(
            [(m.role, m.content) for m in conv.messages[:-1]],
            config,
            persona=persona,
            sender=sender,
            channel=conv.channel,
            knowledge=meshmaster.own_knowledge() if _knowledge(conv) else None,
        )
        if not prompt:  # the retrieval found nothing: the bot answers without the model
            out.append(conv)
            continue
        messages = (Message("user", prompt), conv.messages[-1])
        meta = {**conv.meta, "persona": persona, "sender": sender, NUM_CTX_KEY: config.num_ctx}
        out.append(replace(conv, messages=messages, meta=meta))
    return out
