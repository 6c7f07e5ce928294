"""Profiles: what the request to the model looks like.

- meshmaster (default): the user turn is the one prompt string Mesh Master sends, built by
  meshmaster.build_request from the operator's config and persona (the system block, the
  `Context:` log lines, `Question: ...`, `Answer:`), with the options it sends.
- modelfile: the plain chat (as `ollama run` sends it) with the Modelfile's PARAMETERs.
- no-penalty: meshmaster with repeat_penalty 1.0; a model that avoids loops only because of
  the penalty is not fixed.
- greedy: meshmaster with temperature 0, for deterministic comparisons (one sample per item).

Options use Ollama's names everywhere (num_predict, temperature, top_p, top_k,
repeat_penalty); each backend translates them.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshtune import meshmaster, ollama
from meshtune.errors import MeshtuneError
from meshtune.ollama import Sampling, guide_sampling
from meshtune.rundir import RunDir
from meshtune.suites import KNOWLEDGE_KINDS, Item

PROFILES = ("meshmaster", "modelfile", "no-penalty", "greedy")

# A num_predict of -1 (Ollama: unlimited) is capped at UNLIMITED_CAP tokens here so a runaway
# still ends.
UNLIMITED_CAP = 512


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    options: dict[str, Any]  # Ollama option names
    mesh_master_prompt: bool  # wrap the chat into Mesh Master's single prompt string
    from_modelfile: bool = False  # options are the served model's own (Ollama: send none)

    @property
    def sampling(self) -> Sampling:
        return Sampling.of(self.options)

    @property
    def sampled(self) -> bool:
        return self.sampling.temperature > 0

    @property
    def num_predict(self) -> int:
        n = int(self.options.get("num_predict", -1))
        return n if n > 0 else UNLIMITED_CAP

    @property
    def num_ctx(self) -> int | None:
        """The context Ollama cuts the prompt to (None: not set, the prompt goes whole)."""
        n = self.options.get("num_ctx")
        return None if n is None else int(n)


@dataclass(frozen=True, slots=True)
class Request:
    """One call to the model: the system text, the chat turns (last is the user's) and the
    options."""

    system: str
    turns: list[dict[str, str]]
    profile: Profile
    own_system: bool = False  # the suite item brought its own system turn

    @property
    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    @property
    def prompt(self) -> str:
        """The last user turn: for meshmaster, exactly the prompt string the bot sends."""
        return self.turns[-1]["content"]


def get_profile(
    name: str,
    modelfile_options: dict[str, Any] | None = None,
    bot: meshmaster.BotConfig = meshmaster.SHIPPED,
) -> Profile:
    base = bot.options()
    if name == "meshmaster":
        return Profile(name, base, True)
    if name == "no-penalty":
        return Profile(name, {**base, "repeat_penalty": 1.0}, True)
    if name == "greedy":
        return Profile(name, {**base, "temperature": 0.0}, True)
    if name == "modelfile":
        # The guide's values when the model brings no Modelfile and no recipe `ollama:` block.
        options = modelfile_options if modelfile_options is not None else guide_sampling()
        return Profile(name, dict(options), False, from_modelfile=True)
    raise MeshtuneError(f"unknown profile '{name}'; use one of {', '.join(PROFILES)}")


def build_request(
    item: Item,
    profile: Profile,
    system_prompt: str,
    bot: meshmaster.BotConfig = meshmaster.SHIPPED,
    persona: str | None = None,
) -> Request:
    """The request for one suite item, as the deployed model receives it.

    The system message is the deployment system prompt (the Modelfile's SYSTEM), unless the
    item brings its own system turn. Under Mesh Master's profiles the user turn is the prompt
    string the bot builds (meshmaster.chat_prompt) for the operator's config and persona;
    `/meshtastic` items and their follow-ups get the excerpts of meshtune's own knowledge file,
    the one `export` installs.
    """
    turns = item.turns
    own_system = turns[0].role == "system"
    if own_system:
        system_prompt, turns = turns[0].content, turns[1:]
    if profile.mesh_master_prompt:
        prompt = meshmaster.chat_prompt(
            [(t.role, t.content) for t in turns],
            bot,
            persona=persona,
            channel=item.channel,
            knowledge=meshmaster.own_knowledge() if item.kind in KNOWLEDGE_KINDS else None,
        )
        chat = [{"role": "user", "content": prompt}]
    else:
        chat = [{"role": t.role, "content": t.content} for t in turns]
    return Request(system_prompt, chat, profile, own_system)


def modelfile_system(folder: Path) -> str | None:
    """The SYSTEM of the Modelfile in `folder`, if there is one."""
    path = RunDir(folder).modelfile
    if not path.is_file():
        return None
    system = ollama.read(path).first("system")
    return system.args if system else None


def modelfile_options(folder: Path | None) -> dict[str, Any] | None:
    """A run's (or a GGUF's folder's) Modelfile PARAMETERs, else its recipe's `ollama:` keys;
    None when neither exists (the guide's values are used)."""
    if folder is None:
        return None
    run = RunDir(folder)  # or the folder of a GGUF, with a Modelfile beside it
    if run.modelfile.is_file():
        return guide_sampling(ollama.sampling_options(run.modelfile))
    if run.recipe.is_file():
        return guide_sampling(run.ollama_overrides())
    return None
