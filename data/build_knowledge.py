"""The knowledge path's training rows: `/meshtastic` questions and reference-mode follow-ups.

    PYTHONPATH=src .venv/bin/python data/build_knowledge.py   # from the repository root

Issue 21: the model learns to read the excerpts the bot hands it, not to recall facts. Every
answer stays true by construction:

- FACTS is a hand-written table: each fact has the words of meshtune's knowledge file that
  hold it (its key), short answers that state only what that section says, and questions the
  way people type them on a phone (each also asked once more with a prefix, a tail or a typo);
- for each question the script builds the bot's request (the one prompt builder, with the
  knowledge file `deploy` installs), cuts it as Ollama does at the shipped num_ctx with the
  embedded model's tokenizer (what training renders), and cites the first excerpt whose
  number and key the model still sees; when no excerpt it sees holds the key, the answer is
  exactly the sentence the bot's prompt demands. A question whose key survives only in an
  excerpt that lost its number is left out (neither answer would be honest);
- OUTSIDE questions (other hardware, prices, radio trivia) are not in the file: refused;
- follow-ups ask, in reference mode, about the first question's excerpts ("and the max?");
- a question the retrieval finds nothing for is left out (the bot answers it itself), and so
  is one as close to an eval prompt as the overlap bound (the suites never measure recall).
"""

import functools
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from text_unidecode import unidecode

from meshtune import data
from meshtune.files import write_text
from meshtune.meshmaster import (
    DEFAULT_SYSTEM_PROMPT,
    KNOWLEDGE_COMMAND,
    SHIPPED,
    chat_prompt,
    own_knowledge,
)
from meshtune.meshmaster.truncation import model_view
from meshtune.models import EMBEDDED, resolve
from meshtune.recipe import DEFAULT_SENDERS

OUT = Path("data/mesh_knowledge.jsonl")
SUITES = (Path("data/eval/mesh_eval.jsonl"), Path("data/eval/knowledge_eval.jsonl"))
SOURCE = "build_knowledge"
SEED = 21
NO_DATA = "I don't have enough MeshTastic data for that."
REPLY_BYTES = 160  # one radio chunk


@dataclass(frozen=True, slots=True)
class Fact:
    key: str  # words of the knowledge file that hold the answer (case ignored)
    answers: tuple[str, ...]  # each states only what the key's section says
    asked: tuple[str, ...]  # how people type the question


def fact(key: str, answers: str, asked: str) -> Fact:
    return Fact(key, tuple(answers.split("|")), tuple(asked.split("|")))


FACTS: dict[str, Fact] = {
    # LongFast and the presets
    "lf-sf": fact("SF11", "LongFast uses SF11 at 250 kHz|SF11, with 250 kHz bandwidth",
                  "longfast spreading factor?|whats the sf on long fast|sf for the default preset|"
                  "which spreading factor does longfast run"),
    "lf-bw": fact("250 kHz", "LongFast is 250 kHz wide|250 kHz bandwidth on LongFast",
                  "bandwidth of longfast|how wide is the default preset in khz|longfast bw?|"
                  "what bw does long fast use"),
    "lf-cr": fact("4/5", "LongFast's coding rate is 4/5|Coding rate 4/5",
                  "coding rate on longfast|cr for long fast?|"
                  "what coding rate does the default use"),
    "lf-rate": fact("1.07 kbps", "About 1.07 kbps on LongFast|LongFast moves about 1.07 kbps",
                    "how fast is longfast|longfast bitrate|data rate of the default preset?|"
                    "kbps on long fast"),
    "lf-budget": fact("153 dB", "LongFast has a 153 dB link budget|A 153 dB link budget",
                      "link budget longfast|how many db link budget on default preset|"
                      "longfast budget in db"),
    "fastest": fact("SHORT_TURBO", "SHORT_TURBO is the fastest preset|The fastest is SHORT_TURBO",
                    "fastest modem preset|quickest preset available|which preset is fastest"),
    "farthest": fact("VERY_LONG_SLOW", "VERY_LONG_SLOW has the longest range|"
                     "The longest range preset is VERY_LONG_SLOW",
                     "preset with the most range|longest range preset?|"
                     "which preset reaches farthest"),
    "presets": fact("LONG_MODERATE", "SHORT_TURBO, SHORT_FAST, SHORT_SLOW, MEDIUM_FAST, "
                    "MEDIUM_SLOW, LONG_FAST, LONG_MODERATE, LONG_SLOW, VERY_LONG_SLOW",
                    "list all the presets|what presets r there|all modem presets pls|"
                    "names of the lora presets"),
    "default-preset": fact("LONG_FAST (the default)", "LONG_FAST is the default preset|"
                           "The default is LONG_FAST",
                           "default modem preset?|which preset do nodes ship with|"
                           "stock preset name"),
    "same-preset": fact("same preset", "Only nodes on the same preset, region and channel "
                        "settings hear each other|They must share preset, region and channel",
                        "can nodes on different presets talk|mixing presets on one mesh ok?|"
                        "my buddy uses another preset can we chat"),
    # hops and routing
    "hop-default": fact("defaults to 3", "The hop limit defaults to 3|3 hops by default",
                        "default hop limit|how many hops by default|hop count out of the box|"
                        "whats the stock hop limit"),
    "hop-max": fact("maximum is 7", "The maximum hop limit is 7|7 is the maximum",
                    "max hop limit|can i set hops to 10|highest hops allowed|max number of hops"),
    "hop-more": fact("congestion", "3 is enough for most meshes; a higher hop limit adds "
                     "congestion|Keep 3: a higher hop limit adds congestion",
                     "should i raise my hop limit|is 7 hops a bad idea|more hops better?"),
    "flooding": fact("managed flooding", "Managed flooding: nodes rebroadcast what they hear|"
                     "By managed flooding; nodes rebroadcast what they hear",
                     "how does routing work|how do messages get routed|is meshtastic flooding"),
    "retries": fact("retried up to 3 times", "Reliable packets are retried up to 3 times|"
                    "Up to 3 retries for acknowledged packets",
                    "how many retries|retransmit count for acked msgs|does it retry if no ack"),
    "errors": fact("Max Retransmit", "No Route, Got NAK, Timeout, Max Retransmit, Too Large, "
                   "Duty Cycle Limit",
                   "what delivery errors can i get|list of send errors|message failed error names"),
    "duty": fact("Duty Cycle Limit", "Duty Cycle Limit is an EU limit, per hour|"
                 "It's the EU duty cycle limit, counted per hour",
                 "what is duty cycle limit error|duty cycle error meaning"),
    # sizes
    "packet": fact("237 bytes", "A packet holds at most 237 bytes of data|237 bytes of data "
                   "per packet", "max packet payload|how many bytes per packet|packet data size"),
    "text-app": fact("200 bytes", "The phone apps limit a text to 200 bytes|200 bytes in the "
                     "phone apps", "max message length in the app|how long can a text be|"
                     "character limit for messages|whats the msg size limit"),
    "text-py": fact("233 bytes", "The Python library allows 233 bytes and does not split|"
                    "233 bytes; longer text is not split",
                    "python sendtext max length|does the python lib split long msgs|"
                    "python message limit"),
    "header": fact("16-byte header", "Each packet has a 16-byte header|A 16-byte header",
                   "packet header size|how big is the header"),
    # region
    "unset": fact("UNSET", "With region UNSET a node stays silent; set the region|Set the "
                  "region: UNSET never transmits",
                  "node wont transmit|new radio not sending anything|do i have to set region|"
                  "region unset problem"),
    "us": fact("902-928", "The US uses 902-928 MHz (915 MHz)|902-928 MHz in the US",
               "us frequency band|what freq in america|915 or 868 for usa|which band in the us"),
    "eu": fact("868 MHz", "The EU uses 868 MHz (433 MHz also)|868 MHz in Europe, 433 also",
               "eu frequency|what band in europe|freq for germany|is 433 allowed in eu"),
    # SNR and RSSI
    "snr-lf": fact("-17.5", "LongFast works down to about -17.5 dB SNR|About -17.5 dB",
                   "snr floor longfast|lowest snr for long fast|how low can snr go on default"),
    "snr-sf": fact("-7.5", "ShortFast: about -7.5 dB SNR|About -7.5 dB on ShortFast",
                   "shortfast snr limit|min snr short fast"),
    "snr-mf": fact("-12.5", "MediumFast: about -12.5 dB SNR|About -12.5 dB on MediumFast",
                   "mediumfast snr floor|lowest snr medium fast"),
    "snr-ls": fact("-20 dB", "LongSlow goes down to about -20 dB SNR|About -20 dB on LongSlow",
                   "longslow min snr|snr floor for long slow"),
    "snr-ss": fact("-10 dB", "ShortSlow: about -10 dB SNR|About -10 dB on ShortSlow",
                   "shortslow snr floor|min snr on short slow"),
    "snr-good": fact("Positive SNR is excellent", "Positive SNR is excellent; near the "
                     "preset's floor the link is marginal|Positive is excellent",
                     "what snr is good|is +5 snr good|good snr value?"),
    "rssi": fact("-115 dBm", "Better than about -115 dBm is good; -120 dBm or lower is poor|"
                 "-115 dBm or better is good, -120 or lower poor",
                 "what rssi is good|is -118 rssi ok|rssi -125 bad?|good signal strength dbm"),
    "noise": fact("interference", "Good RSSI with bad SNR means local noise or interference|"
                  "Local noise or interference",
                  "good rssi bad snr why|strong signal but low snr|high rssi poor snr meaning"),
    "range": fact("line of sight", "Height and line of sight matter more than power|Go higher: "
                  "height and line of sight beat power",
                  "how to get more range|better range tips|range is bad what do i do"),
    "antenna": fact("mounted higher", "A better antenna mounted higher helps most|Mount a "
                    "better antenna higher", "best upgrade for range|where to put my antenna|"
                    "more power or higher antenna"),
    # roles
    "client": fact("CLIENT is the default", "CLIENT is the default role, right for most nodes|"
                   "CLIENT, the default", "which role should i use|default device role|"
                   "best role for most people|role for my handheld"),
    "client-relay": fact("if no other node has", "CLIENT rebroadcasts a packet if no other "
                         "node has|Yes, if no other node has",
                         "does client rebroadcast|does a client node relay"),
    "router": fact("ROUTER always rebroadcasts once", "ROUTER always rebroadcasts once|"
                   "It always rebroadcasts once", "what does router role do|router role meaning|"
                   "what is router mode"),
    "router-where": fact("not for handhelds", "ROUTER is for a hilltop, roof or tower, not "
                         "handhelds|Not for handhelds: hilltop, roof or tower",
                         "router on my handheld ok?|should my portable be a router|"
                         "role for a roof node|hilltop node role"),
    "router-ble": fact("Bluetooth and Wi-Fi are off", "On ROUTER, Bluetooth and Wi-Fi are off "
                       "and power saving is on|Bluetooth and Wi-Fi are off",
                       "does router turn off bluetooth|can i use wifi on a router node"),
    "mute": fact("CLIENT_MUTE never", "CLIENT_MUTE never rebroadcasts other nodes' packets|"
                 "It never rebroadcasts others' packets",
                 "what does client mute do|role that doesnt relay|"
                 "second radio next to my main one"),
    "hidden": fact("CLIENT_HIDDEN", "CLIENT_HIDDEN broadcasts only as needed and stays off the "
                   "node list|It stays hidden from the node list",
                   "client hidden role?|role to hide from node list|what is client_hidden"),
    "base": fact("CLIENT_BASE", "CLIENT_BASE always rebroadcasts to and from your favourited "
                 "nodes|For a home base: relays your favourited nodes",
                 "client base role meaning|what does client_base do|home base role"),
    "late": fact("ROUTER_LATE", "ROUTER_LATE rebroadcasts once, after all other nodes|It fills "
                 "gaps: rebroadcasts once, after all others",
                 "router late what is it|what does router_late do|role to fill gaps"),
    "tracker": fact("TRACKER prioritises", "TRACKER prioritises GPS position packets|It "
                    "prioritises GPS positions", "tracker role|what is the tracker role for|"
                    "role for gps tracking"),
    "sensor": fact("SENSOR prioritises", "SENSOR prioritises telemetry|It prioritises telemetry",
                   "sensor role meaning|role for a weather station node"),
    "lost": fact("LOST_AND_FOUND", "LOST_AND_FOUND broadcasts its location on the default "
                 "channel|It broadcasts its location on the default channel",
                 "lost and found role|what does lost_and_found do"),
    "tak": fact("ATAK", "TAK and TAK_TRACKER are for ATAK|Use TAK or TAK_TRACKER",
                "tak role?|which role for atak"),
    "repeater": fact("REPEATER is deprecated", "REPEATER is deprecated (2.7.11); use ROUTER or "
                     "ROUTER_LATE|Deprecated: use ROUTER or ROUTER_LATE",
                     "is repeater role still a thing|repeater deprecated?|should i use repeater"),
    "router-client": fact("ROUTER_CLIENT is deprecated", "ROUTER_CLIENT is deprecated (2.3.15)|"
                          "Deprecated since 2.3.15",
                          "router_client still ok|router client role gone?"),
    # channels and encryption
    "channels": fact("8 channels", "Up to 8 channels, index 0-7|8 channels at most (0-7)",
                     "how many channels|max channels per radio|channel limit|"
                     "can i have 10 channels"),
    "primary": fact("one PRIMARY", "One PRIMARY, the others SECONDARY or DISABLED|Just one "
                    "PRIMARY channel", "primary vs secondary channel|how many primary channels"),
    "name": fact("under 12 bytes", "Channel names are under 12 bytes|Under 12 bytes",
                 "max channel name length|how long can a channel name be"),
    "aq": fact("AQ== is publicly known", "No: the default key AQ== is publicly known|Not "
               "private; AQ== is public, anyone can read it",
               "is the default channel private|aq== secure?|can others read longfast|"
               "is default psk secret"),
    "private": fact("random 256-bit key", "Set a random 256-bit key; share the name and key|"
                    "Use a random 256-bit key", "how do i make a private channel|"
                    "private group chat setup|make my channel secure"),
    "psk": fact("AES-256", "Empty, 16 bytes (AES-128) or 32 bytes (AES-256)|16 bytes for "
                "AES-128, 32 for AES-256, or empty", "psk sizes|key length options|"
                "aes 128 or 256?|channel key size"),
    "match": fact("same channel name and key", "Both need the same channel name and key|Same "
                  "channel name and key on both", "why cant my 2 nodes talk on my channel|"
                  "what has to match for a channel"),
    "dm": fact("2.5", "Since firmware 2.5 DMs use public-key (PKI) encryption|PKI encryption, "
               "since 2.5", "are dms encrypted|dm encryption how|pki dms since when"),
    "headers": fact("headers are not encrypted", "Headers are not encrypted, so nodes relay "
                    "what they cannot decrypt|No, headers are not encrypted",
                    "can nodes relay my dms without reading them|are packet headers encrypted"),
    # boards
    "battery": fact("nRF52", "nRF52 boards use far less power: best battery life|nRF52 "
                    "boards last longest", "best board for battery|longest battery life radio|"
                    "nrf52 or esp32 for battery"),
    "nrf-boards": fact("RAK WisBlock 4631", "RAK WisBlock 4631, LilyGO T-Echo, Seeed Wio "
                       "Tracker, XIAO nRF52840 kits", "which boards are nrf52|low power board "
                       "examples"),
    "gps": fact("T-Beam (has GPS)", "The LilyGO T-Beam (ESP32) has GPS|T-Beam has GPS",
                "which board has gps|does the tbeam have gps"),
    "esp": fact("Heltec V3", "Heltec V3, LilyGO T-Beam, Station G2|ESP32: Heltec V3, T-Beam, "
                "Station G2", "is heltec v3 esp32|which boards are esp32"),
    # the Python library
    "tcp": fact("4403", "TCPInterface(hostname), port 4403|Port 4403 with TCPInterface",
                "python tcp port|connect over wifi python|what port does the api use"),
    "serial": fact("SerialInterface()", "SerialInterface() auto-detects the port|Use "
                   "meshtastic.serial_interface.SerialInterface()",
                   "python connect usb|serial connect in python"),
    "ble": fact("BLEInterface", "Use BLEInterface(address)|BLEInterface(address)",
                "python bluetooth connect|ble from python"),
    "receive": fact("meshtastic.receive.text", "Subscribe to meshtastic.receive.text|Subscribe "
                    "to meshtastic.receive.text; text is in packet decoded",
                    "python receive messages|how to read incoming text python"),
    "send": fact("sendText", "interface.sendText(text, destinationId=\"^all\")|Call "
                 "interface.sendText(text)", "python send message|send text from a script"),
}  # fmt: skip

BY_KEY = {f.key: f for f in FACTS.values()}

# Questions the file does not answer: the right answer is the refusal sentence.
OUTSIDE = (
    "price of a tbeam|how much does a rak cost|whats the range of wifi halow|how to solder an sma"
    "|ham license needed for lora?|best solar panel size|what is aprs|can i use a baofeng"
    "|frs channel 7 frequency|gmrs license cost|what battery for 3 days|best antenna brand"
    "|what coax cable for my antenna|what is reticulum|lora vs lte|is there a kiss tnc mode"
    "|what does a 5g tower interfere with|where to buy a heltec|cheapest node to buy"
    "|how tall should my mast be in feet|what is the weather tomorrow|who invented lora"
    "|what year did meshtastic start|how many users does meshtastic have|can it run doom"
    "|does it work underwater|best enclosure for outdoor node|what glue for an enclosure"
    "|is lora safe for pets|how far did the record link go|what is the speed of light"
    "|best 18650 cell brand|how many mah is a t-echo battery|amazon link for rak starter kit"
    "|can i charge it with usb c pd|what is a dipole|how long is a 915 quarter wave"
    "|does rain hurt signal|what is sf7 range in miles|can i talk to satellites"
    "|callsign lookup k7qx|what does 73 mean|what's cw|what is dmr|how does starlink work"
    "|what is the meaning of life|best pizza near me|stock price of semtech"
).split("|")

# Reference-mode follow-ups: (the first question's fact, follow-ups typed as people do, the
# follow-up's fact or None when the file does not answer it).
FOLLOW_UPS: list[tuple[str, str, str | None]] = [
    ("hop-default", "and the max?|max?|how high can it go", "hop-max"),
    ("hop-max", "whats the default then|and default?", "hop-default"),
    ("us", "what about eu?|and europe", "eu"),
    ("eu", "and the us?|what about america", "us"),
    ("snr-lf", "and for shortfast?|shortfast?", "snr-sf"),
    ("snr-lf", "what about medium fast|mediumfast?", "snr-mf"),
    ("snr-lf", "longslow?|and long slow", "snr-ls"),
    ("lf-sf", "and the bandwidth?|bw?", "lf-bw"),
    ("lf-sf", "coding rate?|and the cr", "lf-cr"),
    ("lf-bw", "how fast is that|kbps?", "lf-rate"),
    ("lf-rate", "link budget?|and the budget in db", "lf-budget"),
    ("default-preset", "which is fastest|fastest one?", "fastest"),
    ("fastest", "and longest range?|which goes farthest", "farthest"),
    ("channels", "how many primary|primary ones?", "primary"),
    ("channels", "name length limit?|how long can names be", "name"),
    ("aq", "so how do i make it private|how do i lock it down", "private"),
    ("psk", "and dms?|what about direct messages", "dm"),
    ("dm", "are headers encrypted too|headers?", "headers"),
    ("client", "and router?|what about router", "router"),
    ("router", "ok on a handheld?|good for my portable?", "router-where"),
    ("router", "does it turn off bluetooth|bluetooth still on?", "router-ble"),
    ("mute", "and client hidden?|what about hidden", "hidden"),
    ("late", "what about client base|and client_base", "base"),
    ("tracker", "and sensor?|sensor role?", "sensor"),
    ("repeater", "router_client too?|and router client", "router-client"),
    ("packet", "and in the app?|app limit?", "text-app"),
    ("text-app", "and python?|in the python lib?", "text-py"),
    ("flooding", "how many retries|does it retry", "retries"),
    ("retries", "what errors can i get|error names?", "errors"),
    ("rssi", "good rssi bad snr?|and if snr is bad", "noise"),
    ("battery", "examples?|which boards", "nrf-boards"),
    ("battery", "which has gps|gps board?", "gps"),
    ("tcp", "and usb?|over serial?", "serial"),
    ("serial", "bluetooth?|and ble", "ble"),
    ("receive", "and sending?|how do i send", "send"),
    ("unset", "us freq?|what band in the us", "us"),
    ("range", "antenna tips?|where should the antenna go", "antenna"),
    ("lf-sf", "how much does a radio cost", None),
    ("hop-default", "does it work with lorawan", None),
    ("us", "what about 2.4 ghz", None),
    ("battery", "how many mah battery", None),
    ("router", "best mast height?", None),
    ("channels", "can i use a baofeng on them", None),
    ("aq", "is it legal to encrypt on ham bands", None),
    ("rssi", "what cable loses least", None),
    ("tcp", "does it work with home assistant", None),
    ("client", "price of a rak?", None),
]

# How people type on a phone: a prefix, a tail, or one typo.
PREFIXES = ("hey ", "quick q ", "so ", "um ", "pls ")
TAILS = ("?", " ??", " pls", " thx")


def typed(question: str, rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return rng.choice(PREFIXES) + question
    if kind == 1:
        return question.rstrip("?") + rng.choice(TAILS)
    words = question.split()
    long = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 5]
    if not long:
        return question.rstrip("?") + rng.choice(TAILS)
    i = rng.choice(long)
    j = rng.randrange(1, len(words[i]) - 2)  # swap two inner letters
    w = words[i]
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


class Sight:
    """What the model sees of a knowledge request, as training renders it: the bot's prompt
    (meshmaster.chat_prompt, meshtune's knowledge file, the shipped config), Ollama's cut at
    num_ctx with the embedded tokenizer after the recipe's default system prompt."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.kb = tokenizer, own_knowledge()

    def answer(self, turns: list[tuple[str, str]], key: str | None) -> int | str | None:
        """The excerpt number to cite for `key`, NO_DATA when no excerpt the model sees holds
        it, None to leave the question out (nothing retrieved, or the key seen only where its
        excerpt's number was cut). Every sender name the recipe may render must agree."""
        query = turns[0][1].removeprefix(KNOWLEDGE_COMMAND).strip()
        chunks = self.kb.search(query, SHIPPED.kb_max_chars)
        if not chunks:
            return None
        # a `/meshtastic` request holds no sender name; a follow-up's DM history does
        senders = DEFAULT_SENDERS if len(turns) > 1 else DEFAULT_SENDERS[:1]
        views = [self._seen(tuple(turns), s) for s in senders]
        if key is None:
            return NO_DATA
        key = key.lower()
        for n, chunk in enumerate(chunks, 1):
            header = f"[{n}] {unidecode(chunk.title)}\n".lower()
            if key in unidecode(chunk.text).lower() and all(header in v for v in views):
                return n
        return NO_DATA if all(key not in v for v in views) else None

    @functools.cache  # noqa: B019 (one Sight a run)
    def _seen(self, turns: tuple[tuple[str, str], ...], sender: str) -> str:
        prompt = chat_prompt(turns, SHIPPED, sender=sender, knowledge=self.kb)
        cut = model_view(self.tokenizer, DEFAULT_SYSTEM_PROMPT, prompt, SHIPPED.num_ctx)
        seen = self.tokenizer.decode(cut.tokens[cut.keep :])
        return seen[: seen.rfind("Question: ")].lower()  # the question's words are no evidence


# How a reply cites its excerpt (each frame has its own words: the lint ignores punctuation). A
# fact's replies take its answers in every frame in turn, so few repeat word for word.
FRAMES = ("{a} [{n}].", "{a}, per [{n}].", "Per [{n}]: {a}.", "From [{n}]: {a}.",
          "{a} (see [{n}]).", "See [{n}]: {a}.")  # fmt: skip


def reply(answer: int | str, fact: Fact | None, turn: dict[str, int]) -> str:
    """The reply citing excerpt `answer`, or the refusal; `turn` counts each fact's replies."""
    if answer == NO_DATA or fact is None:
        return NO_DATA
    i = turn[fact.key] = turn.get(fact.key, -1) + 1
    frame = FRAMES[i % len(FRAMES)]
    text = frame.format(a=fact.answers[i // len(FRAMES) % len(fact.answers)], n=answer)
    if len(text.encode()) > REPLY_BYTES:
        raise SystemExit(f"{text!r} is over {REPLY_BYTES} bytes; shorten the fact's answer")
    return text


def questions() -> list[tuple[str, str | None]]:
    """Each fact's questions and the OUTSIDE ones with their key (None: the file does not hold
    the answer), each also once as typed on a phone."""
    rng = random.Random(SEED)
    asked = [(q, f.key) for f in FACTS.values() for q in f.asked] + [(q, None) for q in OUTSIDE]
    return [(q2, key) for q, key in asked for q2 in (q, typed(q, rng))]


def knowledge_rows(tokenizer: Any, suites: tuple[Path, ...] = SUITES) -> list[dict]:
    """The `/meshtastic` rows, then the follow-ups."""
    _check_keys(sight := Sight(tokenizer))
    turn: dict[str, int] = {}
    evals = [data.content_words(t) for s in suites for t in _suite_turns(s)]
    seen: set[str] = set()

    def new(*texts: str) -> bool:  # far from every eval prompt, not asked by another row
        key = " | ".join(data.normalize(t) for t in texts)
        fresh = key not in seen and all(_far(t, evals) for t in texts)
        seen.add(key)
        return fresh

    rows = []
    for q, key in questions():
        turns = [("user", f"{KNOWLEDGE_COMMAND} {q}")]
        answer = sight.answer(turns, key)
        if answer is not None and new(turns[0][1]):
            rows.append(_row([q], [reply(answer, BY_KEY.get(key), turn)]))
    for first, follows, then in FOLLOW_UPS:  # after three ways of asking the first question
        for q, follow in itertools.product(FACTS[first].asked[:3], follows.split("|")):
            turns = [("user", f"{KNOWLEDGE_COMMAND} {q}")]
            opening = sight.answer(turns, FACTS[first].key)
            if opening is None:
                continue
            said = reply(opening, FACTS[first], turn)
            turns += [("assistant", said), ("user", follow)]
            fact_then = FACTS[then] if then else None
            answer = sight.answer(turns, fact_then.key if fact_then else None)
            if answer is not None and new(turns[0][1], follow):
                rows.append(_row([q, follow], [said, reply(answer, fact_then, turn)]))
    return rows


def _check_keys(sight: Sight) -> None:
    """Every fact's key is words of the knowledge file (else the table, not the bot, is wrong)."""
    text = "\n".join(unidecode(c.text).lower() for c in sight.kb.chunks)
    missing = [name for name, f in FACTS.items() if f.key.lower() not in text]
    if missing:
        raise SystemExit(f"{sight.kb.path}: no chunk holds the key of {', '.join(missing)}; "
                         "fix FACTS in data/build_knowledge.py")  # fmt: skip


def _row(asked: list[str], replies: list[str]) -> dict:
    turns = []
    for i, (q, a) in enumerate(zip(asked, replies, strict=True)):
        text = f"{KNOWLEDGE_COMMAND} {q}" if i == 0 else q
        turns += [{"from": "human", "value": text}, {"from": "gpt", "value": a}]
    return {"category": "knowledge", "source": SOURCE, "conversations": turns}


def _suite_turns(suite: Path) -> Iterator[str]:
    for item in map(json.loads, suite.read_text().splitlines()):
        if "prompt" in item:
            yield item["prompt"]
        else:
            yield from (t["content"] for t in item["messages"] if t["role"] == "user")


def _far(question: str, evals: list[frozenset[str]]) -> bool:
    words = data.content_words(question)
    return all(data.overlap(words, e) < data.MAX_OVERLAP for e in evals)


def embedded_tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(EMBEDDED).folder)


def main() -> None:
    rows = knowledge_rows(embedded_tokenizer())
    write_text(OUT, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    follow = sum(len(r["conversations"]) == 4 for r in rows)
    refused = sum(r["conversations"][-1]["value"] == NO_DATA for r in rows)
    print(f"{len(rows) - follow} /meshtastic rows and {follow} follow-ups written to {OUT} "
          f"({refused} end with the refusal)")  # fmt: skip


if __name__ == "__main__":
    main()
