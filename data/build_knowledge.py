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
from meshtune.suites import load_suite

DATA = Path(__file__).resolve().parent
OUT = DATA / "mesh_knowledge.jsonl"
SUITES = (DATA / "eval" / "mesh_eval.jsonl", DATA / "eval" / "knowledge_eval.jsonl")
SOURCE = "build_knowledge"
SEED = 21
NO_DATA = "I don't have enough MeshTastic data for that."
REPLY_BYTES = 160  # one radio chunk
REFUSAL_SHARE = 0.18  # of all rows: the issue asks for roughly 15-20%


@dataclass(frozen=True, slots=True)
class Fact:
    keys: tuple[str, ...]  # words of the knowledge file that hold the answer (any; case ignored)
    answers: tuple[str, ...]  # each states only what every section holding a key says
    asked: tuple[str, ...]  # how people type the question


def fact(keys: str, answers: str, asked: str) -> Fact:
    """A fact from `|`-separated keys, answers and questions."""
    return Fact(*(tuple(part.split("|")) for part in (keys, answers, asked)))


FACTS: dict[str, Fact] = {
    # LongFast and the presets
    "lf-sf": fact(
        "default modem preset, is on SF11",
        "LongFast uses SF11 at 250 kHz|SF11, with 250 kHz bandwidth",
        "longfast spreading factor?|whats the sf on long fast|sf for the default preset|"
        "which spreading factor does longfast run",
    ),
    "lf-bw": fact(
        "SF11, 250 kHz",
        "LongFast is 250 kHz wide|250 kHz bandwidth on LongFast",
        "bandwidth of longfast|how wide is the default preset in khz|longfast bw?|"
        "what bw does long fast use",
    ),
    "lf-cr": fact(
        "4/5: about 1.07 kbps",
        "LongFast's coding rate is 4/5|Coding rate 4/5",
        "coding rate on longfast|cr for long fast?|what coding rate does the default use",
    ),
    "lf-rate": fact(
        "1.07 kbps",
        "About 1.07 kbps on LongFast|LongFast moves about 1.07 kbps",
        "how fast is longfast|longfast bitrate|data rate of the default preset?|kbps on long fast",
    ),
    "lf-budget": fact(
        "153 dB",
        "LongFast has a 153 dB link budget|A 153 dB link budget",
        "link budget longfast|how many db link budget on default preset|longfast budget in db",
    ),
    "fastest": fact(
        "SHORT_TURBO",
        "SHORT_TURBO is the fastest preset|The fastest is SHORT_TURBO",
        "fastest modem preset|quickest preset available|which preset is fastest",
    ),
    "farthest": fact(
        "VERY_LONG_SLOW",
        "VERY_LONG_SLOW has the longest range|The longest range preset is VERY_LONG_SLOW",
        "preset with the most range|longest range preset?|which preset reaches farthest",
    ),
    "presets": fact(
        "SHORT_TURBO, SHORT_FAST",
        "SHORT_TURBO, SHORT_FAST, SHORT_SLOW, MEDIUM_FAST, MEDIUM_SLOW, LONG_FAST, "
        "LONG_MODERATE, LONG_SLOW, VERY_LONG_SLOW",
        "list all the presets|what presets r there|all modem presets pls|names of the lora presets",
    ),
    "default-preset": fact(
        "LONG_FAST (the default)|default preset LONG_FAST|"
        "LongFast (LONG_FAST), the default modem preset",
        "LONG_FAST is the default preset|The default is LONG_FAST",
        "default modem preset?|which preset do nodes ship with|stock preset name",
    ),
    "same-preset": fact(
        "same preset",
        "No: only nodes on the same preset, region and frequency slot hear each other|"
        "No, they must share the preset",
        "can nodes on different presets talk|mixing presets on one mesh ok?|"
        "my buddy uses another preset can we chat",
    ),
    # hops and routing
    "hop-default": fact(
        "defaults to 3",
        "The hop limit defaults to 3|3 hops by default",
        "default hop limit|how many hops by default|hop count out of the box|"
        "whats the stock hop limit",
    ),
    "hop-max": fact(
        "maximum is 7",
        "The maximum hop limit is 7|7 is the maximum",
        "max hop limit|can i set hops to 10|highest hops allowed|max number of hops",
    ),
    "hop-more": fact(
        "congestion",
        "3 is enough for most meshes; a higher hop limit adds congestion|"
        "Keep 3: a higher hop limit adds congestion",
        "should i raise my hop limit|is 7 hops a bad idea|more hops better?",
    ),
    "flooding": fact(
        "managed flooding",
        "Managed flooding: a node rebroadcasts what it hears unless another node already did|"
        "By managed flooding",
        "how does routing work|how do messages get routed|is meshtastic flooding",
    ),
    "retries": fact(
        "retried up to 3 times",
        "Reliable packets are retried up to 3 times|Up to 3 retries for acknowledged packets",
        "how many retries|retransmit count for acked msgs|does it retry if no ack",
    ),
    "errors": fact(
        "Max Retransmit",
        "No Route, Got NAK, Timeout, Max Retransmit, Too Large, Duty Cycle Limit",
        "what delivery errors can i get|list of send errors|message failed error names",
    ),
    "duty": fact(
        "Duty Cycle Limit",
        "Duty Cycle Limit is an EU limit, per hour|It's the EU duty cycle limit, counted per hour",
        "what is duty cycle limit error|duty cycle error meaning",
    ),
    # sizes
    "packet": fact(
        "237 bytes",
        "A packet holds at most 237 bytes of data|237 bytes of data per packet",
        "max packet payload|how many bytes per packet|packet data size",
    ),
    "text-app": fact(
        "200 bytes",
        "The phone apps limit a text to 200 bytes|200 bytes in the phone apps",
        "max message length in the app|how long can a text be|character limit for messages|"
        "whats the msg size limit",
    ),
    "text-py": fact(
        "233 bytes",
        "The Python library allows 233 bytes and does not split|"
        "233 bytes; longer text is not split",
        "python sendtext max length|does the python lib split long msgs|python message limit",
    ),
    "header": fact(
        "16-byte header",
        "Each packet has a 16-byte header|A 16-byte header",
        "packet header size|how big is the header",
    ),
    # region
    "unset": fact(
        "UNSET",
        "With region UNSET a node stays silent; set the region|"
        "Set the region: UNSET never transmits",
        "node wont transmit|new radio not sending anything|do i have to set region|"
        "region unset problem",
    ),
    "us": fact(
        "902-928",
        "The US uses 902-928 MHz (915 MHz)|902-928 MHz in the US",
        "us frequency band|what freq in america|915 or 868 for usa|which band in the us",
    ),
    "eu": fact(
        "868 MHz",
        "Europe uses 868 MHz|868 MHz in the EU",
        "eu frequency|what band in europe|freq for germany|is 433 allowed in eu",
    ),
    # SNR and RSSI
    "snr-lf": fact(
        "-17.5",
        "LongFast works down to about -17.5 dB SNR|About -17.5 dB",
        "snr floor longfast|lowest snr for long fast|how low can snr go on default",
    ),
    "snr-sf": fact(
        "-7.5",
        "ShortFast: about -7.5 dB SNR|About -7.5 dB on ShortFast",
        "shortfast snr limit|min snr short fast",
    ),
    "snr-mf": fact(
        "-12.5",
        "MediumFast: about -12.5 dB SNR|About -12.5 dB on MediumFast",
        "mediumfast snr floor|lowest snr medium fast",
    ),
    "snr-ls": fact(
        "-20 dB",
        "LongSlow goes down to about -20 dB SNR|About -20 dB on LongSlow",
        "longslow min snr|snr floor for long slow",
    ),
    "snr-ss": fact(
        "-10 dB",
        "ShortSlow: about -10 dB SNR|About -10 dB on ShortSlow",
        "shortslow snr floor|min snr on short slow",
    ),
    "snr-good": fact(
        "Positive SNR is excellent",
        "Positive SNR is excellent; near the preset's floor the link is marginal|"
        "Positive is excellent",
        "what snr is good|is +5 snr good|good snr value?",
    ),
    "rssi": fact(
        "-115 dBm",
        "Better than about -115 dBm is good; -120 dBm or lower is poor|"
        "-115 dBm or better is good, -120 or lower poor",
        "what rssi is good|is -118 rssi ok|rssi -125 bad?|good signal strength dbm",
    ),
    "noise": fact(
        "interference",
        "Good RSSI with bad SNR means local noise or interference|Local noise or interference",
        "good rssi bad snr why|strong signal but low snr|high rssi poor snr meaning",
    ),
    "range": fact(
        "line of sight",
        "Height and line of sight matter more than power|"
        "Go higher: height and line of sight beat power",
        "how to get more range|better range tips|range is bad what do i do",
    ),
    "antenna": fact(
        "mounted higher",
        "A better antenna mounted higher helps most|Mount a better antenna higher",
        "best upgrade for range|where to put my antenna|more power or higher antenna",
    ),
    # roles
    "client": fact(
        "CLIENT is the default",
        "CLIENT is the default role, right for most nodes|CLIENT, the default",
        "which role should i use|default device role|best role for most people|"
        "role for my handheld",
    ),
    "client-relay": fact(
        "if no other node has",
        "CLIENT rebroadcasts a packet if no other node has|Yes, if no other node has",
        "does client rebroadcast|does a client node relay",
    ),
    "router": fact(
        "always rebroadcasts once",
        "ROUTER always rebroadcasts once|It always rebroadcasts once",
        "what does router role do|router role meaning|what is router mode",
    ),
    "router-where": fact(
        "not for handhelds",
        "ROUTER is for a hilltop, roof or tower, not handhelds|"
        "Not for handhelds: hilltop, roof or tower",
        "router on my handheld ok?|should my portable be a router|role for a roof node|"
        "hilltop node role",
    ),
    "router-ble": fact(
        "Bluetooth and Wi-Fi are off by default",
        "On ROUTER, Bluetooth and Wi-Fi are off by default and power saving is on|"
        "Bluetooth and Wi-Fi are off by default",
        "does router turn off bluetooth|can i use wifi on a router node",
    ),
    "mute": fact(
        "CLIENT_MUTE role never",
        "CLIENT_MUTE never rebroadcasts other nodes' packets|It never rebroadcasts others' packets",
        "what does client mute do|role that doesnt relay|second radio next to my main one",
    ),
    "hidden": fact(
        "CLIENT_HIDDEN",
        "CLIENT_HIDDEN broadcasts only as needed and stays out of the node list|"
        "It stays out of the node list",
        "client hidden role?|role to hide from node list|what is client_hidden",
    ),
    "base": fact(
        "CLIENT_BASE role always rebroadcasts",
        "CLIENT_BASE always rebroadcasts to and from your favourited nodes|"
        "For a home base: relays your favourited nodes",
        "client base role meaning|what does client_base do|home base role",
    ),
    "late": fact(
        "rebroadcasts once, after all other nodes",
        "ROUTER_LATE rebroadcasts once, after all other nodes|"
        "It fills gaps: rebroadcasts once, after all others",
        "router late what is it|what does router_late do|role to fill gaps",
    ),
    "tracker": fact(
        "TRACKER role prioritises",
        "TRACKER prioritises GPS position packets|It prioritises GPS positions",
        "tracker role|what is the tracker role for|role for gps tracking",
    ),
    "sensor": fact(
        "SENSOR role prioritises",
        "SENSOR prioritises telemetry|It prioritises telemetry",
        "sensor role meaning|role for a weather station node",
    ),
    "lost": fact(
        "LOST_AND_FOUND node broadcasts",
        "LOST_AND_FOUND broadcasts its location on the default channel|"
        "It broadcasts its location on the default channel",
        "lost and found role|what does lost_and_found do",
    ),
    "tak": fact(
        "ATAK",
        "TAK and TAK_TRACKER are for ATAK|Use TAK or TAK_TRACKER",
        "tak role?|which role for atak",
    ),
    "repeater": fact(
        "REPEATER is deprecated",
        "REPEATER is deprecated (2.7.11); use ROUTER or ROUTER_LATE|"
        "Deprecated: use ROUTER or ROUTER_LATE",
        "is repeater role still a thing|repeater deprecated?|should i use repeater",
    ),
    "router-client": fact(
        "ROUTER_CLIENT is deprecated",
        "ROUTER_CLIENT is deprecated (2.3.15)|Deprecated since 2.3.15",
        "router_client still ok|router client role gone?",
    ),
    # channels and encryption
    "channels": fact(
        "8 channels",
        "Up to 8 channels, index 0-7|8 channels at most (0-7)",
        "how many channels|max channels per radio|channel limit|can i have 10 channels",
    ),
    "primary": fact(
        "one PRIMARY",
        "One PRIMARY, the others SECONDARY or DISABLED|Just one PRIMARY channel",
        "primary vs secondary channel|how many primary channels",
    ),
    "name": fact(
        "under 12 bytes",
        "Channel names are under 12 bytes|Under 12 bytes",
        "max channel name length|how long can a channel name be",
    ),
    "aq": fact(
        "AQ== is publicly known",
        "No: the default key AQ== is publicly known|"
        "Not private; AQ== is public, anyone can read it",
        "is the default channel private|aq== secure?|can others read longfast|"
        "is default psk secret",
    ),
    "private": fact(
        "random 256-bit key",
        "Set a random 256-bit key; share the name and key|Use a random 256-bit key",
        "how do i make a private channel|private group chat setup|make my channel secure",
    ),
    "psk": fact(
        "16 bytes long (AES-128)",
        "Empty, 16 bytes (AES-128) or 32 bytes (AES-256)|"
        "16 bytes for AES-128, 32 for AES-256, or empty",
        "psk sizes|key length options|aes 128 or 256?|channel key size",
    ),
    "match": fact(
        "same channel name and key",
        "Both need the same channel name and key|Same channel name and key on both",
        "why cant my 2 nodes talk on my channel|what has to match for a channel",
    ),
    "dm": fact(
        "DM encryption uses public keys",
        "Since firmware 2.5 DMs use public-key (PKI) encryption|PKI encryption, since 2.5",
        "are dms encrypted|dm encryption how|pki dms since when",
    ),
    "headers": fact(
        "header is never encrypted",
        "The header is never encrypted, so nodes relay what they cannot decrypt|"
        "No, the header is never encrypted",
        "can nodes relay my dms without reading them|are packet headers encrypted",
    ),
    # boards
    "battery": fact(
        "best battery life",
        "nRF52 boards use far less power: best battery life|nRF52 boards last longest",
        "best board for battery|longest battery life radio|nrf52 or esp32 for battery",
    ),
    "nrf-boards": fact(
        "RAK WisBlock 4631",
        "RAK WisBlock 4631, LilyGO T-Echo, Seeed Wio Tracker, XIAO nRF52840 kits",
        "which boards are nrf52|low power board examples",
    ),
    "gps": fact(
        "T-Beam (has GPS)",
        "The LilyGO T-Beam (ESP32) has GPS|T-Beam has GPS",
        "which board has gps|does the tbeam have gps",
    ),
    "esp": fact(
        "ESP32 boards: Heltec V3",
        "Heltec V3, LilyGO T-Beam, Station G2|ESP32: Heltec V3, T-Beam, Station G2",
        "is heltec v3 esp32|which boards are esp32",
    ),
    # the Python library
    "tcp": fact(
        "4403",
        "TCPInterface(hostname), port 4403|Port 4403 with TCPInterface",
        "python tcp port|connect over wifi python|what port does the api use",
    ),
    "serial": fact(
        "SerialInterface()",
        "SerialInterface() auto-detects the port|Use meshtastic.serial_interface.SerialInterface()",
        "python connect usb|serial connect in python",
    ),
    "ble": fact(
        "BLEInterface",
        "Use BLEInterface(address)|BLEInterface(address)",
        "python bluetooth connect|ble from python",
    ),
    "receive": fact(
        "meshtastic.receive.text",
        "Subscribe to meshtastic.receive.text|"
        "Subscribe to meshtastic.receive.text; text is in packet decoded",
        "python receive messages|how to read incoming text python",
    ),
    "send": fact(
        "sendText",
        'interface.sendText(text, destinationId="^all")|Call interface.sendText(text)',
        "python send message|send text from a script",
    ),
    # the presets, one by one (each section of the grown file)
    "turbo-bw": fact(
        "500 kHz",
        "ShortTurbo is the only preset with 500 kHz, the widest bandwidth|"
        "500 kHz, the widest bandwidth",
        "short turbo bandwidth|which preset uses 500khz|widest bw preset",
    ),
    "turbo-legal": fact(
        "not legal in every region",
        "ShortTurbo's 500 kHz is not legal in every region|Not in every region: it uses 500 kHz",
        "is short turbo legal everywhere|can i use shortturbo in my country",
    ),
    "turbo-rate": fact(
        "21.88 kbps",
        "ShortTurbo: SF7, 500 kHz, about 21.88 kbps|21.88 kbps",
        "shortturbo speed|how fast is short turbo kbps",
    ),
    "sf-preset": fact(
        "10.94 kbps",
        "ShortFast is SF7, 250 kHz, CR 4/5: 10.94 kbps|SF7 at 250 kHz, 10.94 kbps",
        "short fast settings|shortfast sf and kbps|what sf is shortfast",
    ),
    "ss-preset": fact(
        "6.25 kbps",
        "ShortSlow is SF8, 250 kHz: 6.25 kbps|SF8 and 6.25 kbps",
        "short slow settings|shortslow data rate|sf on short slow",
    ),
    "mf-preset": fact(
        "3.52 kbps",
        "MediumFast is SF9, 250 kHz: 3.52 kbps, 148 dB budget|SF9, 3.52 kbps",
        "medium fast settings|mediumfast sf?|how fast is medium fast",
    ),
    "ms-preset": fact(
        "1.95 kbps",
        "MediumSlow is SF10, 250 kHz: 1.95 kbps|SF10 and 1.95 kbps",
        "medium slow settings|mediumslow spreading factor|mediumslow kbps",
    ),
    "lm-preset": fact(
        "0.34 kbps",
        "LongModerate is SF11, 125 kHz, CR 4/8: 0.34 kbps|SF11 at 125 kHz, 0.34 kbps",
        "long moderate settings|longmoderate bandwidth|how slow is long moderate",
    ),
    "ls-preset": fact(
        "0.18 kbps",
        "LongSlow is SF12, 125 kHz, CR 4/8: 0.18 kbps|SF12, 0.18 kbps",
        "long slow settings|longslow sf|slowest preset speed",
    ),
    "ls-budget": fact(
        "158.5 dB",
        "LongSlow has a 158.5 dB link budget|158.5 dB",
        "link budget of long slow|longslow db budget",
    ),
    "public-mesh": fact(
        "To join the public mesh",
        "Keep the default preset LONG_FAST to join the public mesh|LONG_FAST, the default",
        "what preset for the public mesh|joining the public mesh which preset|"
        "preset to talk to everyone",
    ),
    "sf-step": fact(
        "doubles the airtime",
        "Each SF step up doubles airtime and adds about 2.5 dB of link budget|"
        "It doubles airtime for about 2.5 dB",
        "what does a higher sf do|sf vs range tradeoff|does sf12 go farther than sf11",
    ),
    "bw-double": fact(
        "almost 3 dB",
        "Each doubling of bandwidth costs almost 3 dB|Almost 3 dB per doubling",
        "does wider bandwidth cost range|bandwidth vs range db",
    ),
    "cr-what": fact(
        "redundancy against noise",
        "Coding rate adds redundancy against noise; higher is more reliable but slower|"
        "Redundancy against noise",
        "what is coding rate for|what does cr do|is 4/8 better than 4/5",
    ),
    "cr-overhead": fact(
        "2x overhead",
        "4/5 costs 1.25x, 4/6 1.5x, 4/7 1.75x, 4/8 2x overhead|4/8 is 2x overhead",
        "coding rate overhead|how much slower is cr 4/8",
    ),
    "budget-assume": fact(
        "22 dBm",
        "They assume 22 dBm transmit power and a 0 dBi antenna|22 dBm and a 0 dBi antenna",
        "link budget assumes what power|what tx power are the budgets for",
    ),
    "custom-lora": fact(
        "coding rate by hand",
        "Yes: supported apps set SF, bandwidth and coding rate by hand; restart after|"
        "Yes; restart, then share the new QR code",
        "can i set custom lora settings|custom sf and bw possible?|manual modem settings",
    ),
    "narrow-bw": fact(
        "31 kHz",
        "Bandwidths under 31 kHz may be unstable without a good crystal|"
        "Under 31 kHz may be unstable",
        "can i use 20 khz bandwidth|very narrow bandwidth ok?",
    ),
    # regions and bands
    "set-region": fact(
        "tap UNSET",
        "Tap UNSET by the device name in the app, or run meshtastic --set lora.region|"
        "In the app, or --set lora.region",
        "how do i set the region|set region from cli|where is region setting",
    ),
    "us-power": fact(
        "+30 dBm",
        "The US 902-928 MHz band allows up to +30 dBm ERP|Up to +30 dBm ERP",
        "max power in the us|us tx power limit|how many dbm allowed usa",
    ),
    "us-slots": fact(
        "104 frequency slots",
        "LongFast has 104 frequency slots in the US|104 slots",
        "how many slots in us longfast|us frequency slots count",
    ),
    "us-slot": fact(
        "906.875",
        "After a factory reset a US node sits on slot 20, 906.875 MHz|Slot 20, 906.875 MHz",
        "default us frequency longfast|what mhz does longfast use in us|us default slot",
    ),
    "eu-power": fact(
        "+27 dBm",
        "EU_868 allows up to +27 dBm ERP with a 10% duty cycle|+27 dBm ERP",
        "eu max power|868 power limit|how many dbm in europe",
    ),
    "eu-freq": fact(
        "869.525",
        "EU LongFast has one slot, centred on 869.525 MHz|869.525 MHz",
        "eu longfast frequency|what mhz in europe exactly|eu slot frequency",
    ),
    "eu433": fact(
        "433-434 MHz",
        "EU_433 uses 433-434 MHz at up to +10 dBm ERP|433-434 MHz, +10 dBm",
        "eu 433 details|433 band power limit|433 mhz range of freqs",
    ),
    "eu433-slot": fact(
        "433.875",
        "After a factory reset an EU_433 node sits on slot 4, 433.875 MHz|Slot 4, 433.875 MHz",
        "default 433 slot|eu433 default frequency",
    ),
    "canada": fact(
        "Canada uses US",
        "Canada uses the US region|Use US",
        "region for canada|canadian region code",
    ),
    "anz": fact(
        "ANZ",
        "Australia, Argentina, Brazil and Chile use ANZ|ANZ",
        "region for australia|brazil region code|what region in chile",
    ),
    "slot": fact(
        "hash of the PRIMARY",
        "The slot picks the frequency in the band, from a hash of the PRIMARY channel's name|"
        "A hash of the primary name picks it",
        "what is a frequency slot|lora channel number meaning|what picks the frequency",
    ),
    "slot-hand": fact(
        "set the slot by hand",
        "Nodes whose primary names differ must set the slot by hand|Set the slot by hand",
        "different primary channel names cant talk|renamed primary now no contact",
    ),
    "duty-eu": fact(
        "10% duty cycle",
        "EU_868 allows a 10% duty cycle|10%",
        "eu duty cycle percent|how much airtime in eu",
    ),
    "airtime": fact(
        "airtime for the hour",
        "The node used up its EU airtime for the hour and must wait|"
        "Out of EU airtime for the hour; wait",
        "why must my node wait in eu|airtime used up error",
    ),
    "lorawan": fact(
        "not LoRaWAN",
        "No: Meshtastic is not LoRaWAN, Helium or TTN|Not LoRaWAN",
        "is meshtastic lorawan|does it work with ttn|helium compatible?",
    ),
    "license": fact(
        "no license is needed",
        "In most regions no license is needed|No license needed in most regions",
        "do i need a ham license|license required for meshtastic?|is it legal without a license",
    ),
    "ham": fact(
        "is_licensed",
        "is_licensed lifts power limits in software; use your call sign|Set is_licensed",
        "ham mode setting|licensed operator setting|what does is_licensed do",
    ),
    "ham-psk": fact(
        "leave the channel PSK empty",
        "A licensed ham leaves the channel PSK empty: no encryption|Empty PSK, no encryption",
        "can hams encrypt|ham mode encryption?",
    ),
    # routing and packets
    "hop-edges": fact(
        "edges of the mesh",
        "Raise it only on nodes at the edges of the mesh, not the middle|"
        "At the edges, not the middle",
        "which nodes should get more hops|where to raise hop count",
    ),
    "hop-zero": fact(
        "at zero",
        "Each rebroadcast lowers the hop limit by one; at zero it is not relayed|"
        "At zero it is not relayed",
        "what happens when hops run out|hop limit reaches 0?",
    ),
    "contention": fact(
        "shorter when the packet's SNR is low",
        "A far node rebroadcasts first: low SNR gives a shorter wait|"
        "The farther one: its contention window is shorter",
        "which node relays first|who rebroadcasts first|why do far nodes relay first",
    ),
    "next-hop": fact(
        "becomes the next hop",
        "Since 2.6 a DM floods first; the relaying node becomes the next hop|"
        "Next-hop routing, since 2.6",
        "how are dms routed|next hop routing?|do dms flood",
    ),
    "implicit-ack": fact(
        "hears any node rebroadcast",
        "Once the sender hears any node rebroadcast it|When any node rebroadcasts it",
        "how is a broadcast acked|when does a channel msg get ack",
    ),
    "buffer": fact(
        "30 packets",
        "The radio stores about 30 packets while no app is connected|About 30 packets",
        "does the node keep msgs when phone is off|offline message buffer size|"
        "messages while phone disconnected",
    ),
    "phones": fact(
        "one user's app",
        "One: a node pairs with one user's app at a time|Just one app at a time",
        "can 2 phones connect to one node|how many phones per radio|share a node with my wife",
    ),
    "header-fields": fact(
        "channel hash",
        "Destination, sender and packet ID (4 bytes each), flags, channel hash, next hop, "
        "relay node|"
        "Destination, sender, ID, flags, channel hash",
        "whats in the packet header|header fields",
    ),
    "preamble": fact(
        "16 symbols",
        "A 16-symbol preamble and sync word 0x2B|16 symbols",
        "preamble length|meshtastic sync word",
    ),
    "node-id": fact(
        "Bluetooth MAC",
        "From the bottom four bytes of the Bluetooth MAC|The Bluetooth MAC's bottom 4 bytes",
        "where does node id come from|how is the node number made",
    ),
    "broadcast-addr": fact(
        "0xFFFFFFFF",
        "A broadcast is addressed to 0xFFFFFFFF|0xFFFFFFFF",
        "broadcast address|what is the broadcast node id",
    ),
    "csma": fact(
        "CSMA/CA",
        "They listen before transmitting (CSMA/CA), then a random wait|CSMA/CA",
        "how are collisions avoided|listen before talk?",
    ),
    # roles
    "needless": fact(
        "Needless ROUTER",
        "Needless ROUTERs raise collisions, lower delivery and use up hops|"
        "They raise collisions and use up hops",
        "too many routers bad?|should everyone be a router|why not make my node a router",
    ),
    "unmessageable": fact(
        "unmessageable",
        "Unmessageable: ROUTER, ROUTER_LATE, REPEATER, SENSOR, LOST_AND_FOUND, TRACKER and "
        "TAK_TRACKER|"
        "Those roles are unmessageable",
        "cant dm a router node why|which roles cant get dms",
    ),
    "local-only": fact(
        "LOCAL_ONLY",
        "Set rebroadcast mode LOCAL_ONLY to stop relaying what it can't decrypt|LOCAL_ONLY",
        "stop relaying other peoples packets|rebroadcast mode local only|"
        "dont relay foreign channels",
    ),
    # channels and security
    "primary-index": fact(
        "cannot be disabled",
        "The PRIMARY is index 0; only one, it cannot be disabled|Index 0, and it can't be disabled",
        "can i disable primary|which index is primary",
    ),
    "pos-primary": fact(
        "go only over it",
        "Position and telemetry broadcasts go only over the PRIMARY|Only over PRIMARY",
        "which channel sends position|telemetry on secondary channel?",
    ),
    "aq-means": fact(
        "0x01",
        "AQ== is Base64 of hex 0x01|Base64 for 0x01",
        "what does aq== mean|aq== decoded",
    ),
    "default-name": fact(
        "blank name",
        "Channel 0 has a blank name; apps show the preset's name, LongFast|"
        "A blank name, shown as LongFast",
        "whats the default channel name|default channel called what",
    ),
    "ch-preset": fact(
        "same for all channels",
        "No: the preset is the same for all channels|No, all channels share one preset",
        "different preset per channel?|can channel 2 use shortfast",
    ),
    "relay-private": fact(
        "private channel it is not on",
        "Yes, nodes relay it; only those with the same name and key can read it|"
        "Yes, but they can't read it",
        "do nodes relay my private channel|will others forward my encrypted ch",
    ),
    "aes-ctr": fact(
        "CTR mode",
        "AES in CTR mode with the channel's key|AES-CTR",
        "what encryption is used|aes mode?|which cipher",
    ),
    "tofu": fact(
        "Trust on first use",
        "Trust on first use: the first key heard for a node is kept|TOFU; no central authority",
        "how are keys verified|public key trust|tofu meaning",
    ),
    "signal": fact(
        "forward secrecy",
        "No: no perfect forward secrecy, no integrity check on channel messages|No forward secrecy",
        "is it as secure as signal|can old msgs be decrypted later",
    ),
    "admin-key": fact(
        "admin key",
        "Since 2.5 admin messages are encrypted; the admin key lists allowed public keys|"
        "Through the admin key",
        "remote admin security|how is remote admin protected",
    ),
    "managed": fact(
        "Managed mode stops",
        "Managed mode stops apps writing the config; remote admin changes it|"
        "It locks app config changes",
        "what is managed mode|lock config from app",
    ),
    "backup": fact(
        "--export-config",
        "meshtastic --export-config > config_backup.yaml; restore with --configure|"
        "Use --export-config",
        "backup my keys|how to save my config|restore config file",
    ),
    "new-keys": fact(
        "makes new public and private keys",
        "An erase and reinstall makes new public and private keys|New keys",
        "does reflashing change my keys|erase firmware new key?",
    ),
    # MQTT
    "mqtt": fact(
        "MQTT broker",
        "A gateway node sends packets to an MQTT broker over the internet and back|"
        "It bridges meshes via an MQTT broker",
        "what is mqtt for|mqtt explained|bridge meshes over internet",
    ),
    "zero-hop": fact(
        "directly connected to a gateway",
        "Public MQTT packets reach only nodes directly connected to a gateway|"
        "Zero-hop: only directly connected nodes",
        "mqtt zero hop|do mqtt msgs flood my mesh|public mqtt hops",
    ),
    "mqtt-filter": fact(
        "10-16 bits",
        "Only some packet types; positions at 10-16 bits of precision|"
        "Reduced precision, 10-16 bits",
        "what does public mqtt filter|mqtt position precision",
    ),
    "mqtt-topic": fact(
        "msh/REGION",
        "The root topic is msh/REGION|msh/REGION/2/e/CHANNELNAME/USERID",
        "mqtt topic|root topic for meshtastic mqtt|mqtt path format",
    ),
    "private-broker": fact(
        "not recommended",
        "Not recommended: private brokers skip zero-hop, so it can flood the mesh|"
        "Use private channels instead",
        "default key on my own broker|private mqtt with longfast key",
    ),
    "mqtt-location": fact(
        "locations of all nodes",
        "Yes: public MQTT may publish the locations of all nodes in your mesh|"
        "Yes, all nodes' locations",
        "does mqtt leak location|can mqtt show where i am",
    ),
    # range and antennas
    "record": fact(
        "331 km",
        "The ground range record is 331 km|331 km",
        "range record|farthest meshtastic link|longest distance ever",
    ),
    "connector": fact(
        "50 ohm",
        "50 ohm antennas, usually with an SMA connector|SMA, 50 ohm",
        "antenna connector type|antenna impedance|sma or rp-sma",
    ),
    "no-antenna": fact(
        "without an antenna",
        "Never power on without an antenna: it can damage the radio chip|"
        "No, it can damage the chip",
        "can i power on without antenna|turn on without antenna ok?",
    ),
    "directional": fact(
        "directional antenna",
        "A directional antenna reaches farther but must point at its target: poor for mobile|"
        "Farther, only where pointed",
        "yagi for mobile?|directional antenna good?",
    ),
    "whip": fact(
        "half-wave whip",
        "A tuned half-wave whip may reach farther than a quarter-wave stubby|The half-wave whip",
        "whip or stubby|stubby antenna any good",
    ),
    "cable": fact(
        "cable loses signal",
        "Cable loses signal over distance; use the shortest low-loss cable|Keep it short",
        "long coax to roof ok?|antenna cable length",
    ),
    "walls": fact(
        "Buildings and walls",
        "Buildings and walls weaken LoRa a lot; people much less|A lot",
        "do walls block lora|indoor range bad why",
    ),
    "range-test": fact(
        "range test module",
        "The range test module: one node sends often, another records what arrives|"
        "Use the range test module",
        "how to test range|range test how",
    ),
    # boards and power
    "esp-nrf": fact(
        "Bluetooth only",
        "ESP32 has Wi-Fi and Bluetooth but draws more; nRF52 is efficient, Bluetooth only|"
        "nRF52: Bluetooth only",
        "esp32 vs nrf52 difference|does nrf52 have wifi",
    ),
    "solar-chip": fact(
        "solar node",
        "nRF52, far more power efficient: the one for a solar node|nRF52",
        "best chip for solar node|solar node board",
    ),
    "buy": fact(
        "T1000-E",
        "RAK4631 starter kit, Seeed T1000-E, Wio Tracker L1, Heltec T114, Nano G2 Ultra, "
        "Station G2, T3-S3|"
        "Community favourites include the T1000-E",
        "which board should i buy|recommended boards|best starter node",
    ),
    "sx126x": fact(
        "SX126x",
        "Prefer Semtech SX126x or LR11xx over the older SX127x|SX126x or LR11xx",
        "sx1262 or sx1276|which lora chip is best",
    ),
    "rp2040": fact(
        "RP2040",
        "Yes, RP2040 boards run it, e.g. a Pico with a Waveshare LoRa module|"
        "Yes, but no Bluetooth on the Pico W",
        "pi pico supported?|rp2040 meshtastic",
    ),
    "power-saving": fact(
        "Power saving turns off",
        "It turns off Bluetooth, serial, Wi-Fi and the screen, for small supplies|"
        "Bluetooth, serial, Wi-Fi, screen off",
        "what does power saving do|power save mode",
    ),
    "light-sleep": fact(
        "Light sleep",
        "ESP32 only: the CPU sleeps, LoRa and GPS stay on, 5 minutes by default|ESP32 only",
        "light sleep what is|esp32 sleep mode",
    ),
    "adc": fact(
        "ADC multiplier",
        "Charge to 4.2 V, then set the ADC multiplier override (2 to 6)|Fix the ADC multiplier",
        "battery percent wrong|battery shows 50 when full",
    ),
    "solar-size": fact(
        "measure how much power",
        "First measure how much power your node draws|Measure the node's draw first",
        "what size solar panel|how big a battery for solar",
    ),
    "flash": fact(
        "UF2 bootloader",
        "nRF52 and RP2040 use the UF2 bootloader, a USB drive; ESP32 may need drivers|"
        "UF2, no drivers",
        "how to flash firmware|update firmware nrf52|do i need drivers to flash",
    ),
    "usb-cable": fact(
        "charge-only",
        "The cable may be charge-only; check it carries data|Likely a charge-only cable",
        "computer doesnt see node|usb not detected",
    ),
    # position, telemetry, Wi-Fi, CLI
    "gps-need": fact(
        "paired phone",
        "No: position comes from the node's GPS or the paired phone|No, the phone can give it",
        "does a node need gps|no gps ok?",
    ),
    "pos-interval": fact(
        "15 minutes",
        "With smart broadcast off, every 15 minutes by default|15 minutes with smart broadcast off",
        "how often is position sent|position broadcast interval",
    ),
    "smart": fact(
        "100 m and 30 s",
        "Smart broadcast sends more while moving: after at least 100 m and 30 s|"
        "After 100 m and 30 s",
        "smart position what|smart broadcast distance",
    ),
    "gps-update": fact(
        "every 2 minutes",
        "The GPS updates every 2 minutes by default|Every 2 minutes",
        "gps update interval|how often gps polls",
    ),
    "hide-pos": fact(
        "position precision",
        "Lower the channel's position precision, or turn location off on channel 0|"
        "Lower position precision",
        "hide my location|stop sharing position",
    ),
    "telemetry": fact(
        "every 30 minutes",
        "Device telemetry every 30 minutes, NodeInfo every 3 hours|30 minutes",
        "how often is telemetry sent|telemetry interval|nodeinfo interval",
    ),
    "scaling": fact(
        "more than 40 nodes",
        "Over 40 nodes, intervals scale by 1 + (nodes - 40) x 0.075|Scaled above 40 nodes",
        "why are my intervals longer|large mesh scaling",
    ),
    "wifi": fact(
        "wifi_ssid",
        "ESP32 joins 2.4 GHz Wi-Fi as a client: set network.wifi_ssid and network.wifi_psk|"
        "Set network.wifi_ssid and wifi_psk",
        "connect node to wifi|wifi setup",
    ),
    "wifi-ap": fact(
        "can't be an access point",
        "No: it can't be an access point or hotspot|No, only a Wi-Fi client",
        "can the node be a wifi hotspot|access point mode?",
    ),
    "wifi-ble": fact(
        "turns Bluetooth off",
        "Turning Wi-Fi on turns Bluetooth off|Wi-Fi on means Bluetooth off",
        "wifi and bluetooth at once?|bluetooth gone after wifi",
    ),
    "slow-boot": fact(
        "20-30 seconds",
        "It takes 20-30 seconds longer while it makes SSL keys|20-30 seconds",
        "slow boot after wifi|why is first boot slow",
    ),
    "cli-install": fact(
        "pip3 install --upgrade meshtastic",
        "pip3 install --upgrade meshtastic|Run pip3 install --upgrade meshtastic",
        "install cli|how do i get the meshtastic cli",
    ),
    "cli-info": fact(
        "--info",
        "meshtastic --info shows the node's config|Run meshtastic --info",
        "show config from cli|cli info command",
    ),
    "canned": fact(
        "--set-canned-message",
        "Use meshtastic --set-canned-message, split by pipes, up to 200 characters|"
        "--set-canned-message",
        "set canned messages|canned message setup|quick replies setup",
    ),
}

# Questions the file does not answer: the right answer is the refusal sentence.
OUTSIDE = (
    "price of a tbeam|how much does a rak cost|where to buy a heltec|cheapest node to buy"
    "|amazon link for rak starter kit|stock price of semtech|best antenna brand|best 18650 brand"
    "|how many mah is a t-echo battery|best enclosure for outdoor node|what glue for an enclosure"
    "|whats the range of wifi halow|what is aprs|can i use a baofeng|frs channel 7 frequency"
    "|gmrs license cost|what is reticulum|lora vs lte|is there a kiss tnc mode|what is dmr"
    "|how does starlink work|what does a 5g tower interfere with|can i talk to satellites"
    "|callsign lookup k7qx|what does 73 mean|whats cw|what is a dipole|what is sf7 range in miles"
    "|how tall should my mast be in feet|how to solder an sma|can i charge it with usb c pd"
    "|who invented lora|what year did meshtastic start|how many users does meshtastic have"
    "|can it run doom|is lora safe for pets|what is the speed of light|what is the weather tomorrow"
    "|what is the meaning of life|best pizza near me"
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
    ("us-power", "and eu?|what about europe power", "eu-power"),
    ("eu-power", "duty cycle?|how much airtime", "duty-eu"),
    ("us-slot", "how many slots?|slot count?", "us-slots"),
    ("eu433", "default slot?|which freq after reset", "eu433-slot"),
    ("canada", "and australia?|what about brazil", "anz"),
    ("lorawan", "do i need a license|license?", "license"),
    ("license", "what about hams?|ham setting?", "ham"),
    ("mqtt", "does it flood my mesh|zero hop?", "zero-hop"),
    ("mqtt", "what topic|topic format?", "mqtt-topic"),
    ("mqtt-location", "how do i hide it|hide position?", "hide-pos"),
    ("connector", "power on without one?|is no antenna ok", "no-antenna"),
    ("whip", "directional?|and a yagi", "directional"),
    ("esp-nrf", "which for solar|solar?", "solar-chip"),
    ("pos-interval", "and telemetry?|telemetry too?", "telemetry"),
    ("wifi", "hotspot mode?|can it be an ap", "wifi-ap"),
    ("wifi", "bluetooth still on?|and ble?", "wifi-ble"),
    ("sf-preset", "and shortslow?|short slow?", "ss-preset"),
    ("mf-preset", "and mediumslow?|medium slow?", "ms-preset"),
    ("ls-preset", "link budget?|budget in db", "ls-budget"),
    ("tofu", "forward secrecy?|as secure as signal?", "signal"),
    ("backup", "does reflashing change keys|new keys after erase?", "new-keys"),
    ("cli-install", "how do i see config|show settings", "cli-info"),
    ("needless", "which roles cant be dmed|unmessageable ones?", "unmessageable"),
    ("flash", "pc doesnt see it|usb not showing", "usb-cable"),
    ("lf-sf", "how much does a radio cost", None),
    ("hop-default", "does it work with zigbee", None),
    ("us", "is there a 2.4 ghz lora version", None),
    ("battery", "how many mah battery", None),
    ("router", "best mast height?", None),
    ("channels", "can i use a baofeng on them", None),
    ("aq", "who makes the best enclosure", None),
    ("rssi", "which cable brand", None),
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

    def answer(self, turns: list[tuple[str, str]], fact: Fact | None) -> int | str | None:
        """The excerpt number to cite for `fact`, NO_DATA when no excerpt the model sees holds
        a key of it, None to leave the question out (nothing retrieved, or a key seen only where
        its excerpt's number was cut). Every sender name the recipe may render must agree."""
        query = turns[0][1].removeprefix(KNOWLEDGE_COMMAND).strip()
        chunks = self.kb.search(query, SHIPPED.kb_max_chars)
        if not chunks:
            return None
        # a `/meshtastic` request holds no sender name; a follow-up's DM history does
        senders = DEFAULT_SENDERS if len(turns) > 1 else DEFAULT_SENDERS[:1]
        views = [self._seen(tuple(turns), s) for s in senders]
        if fact is None:
            return NO_DATA
        keys = [k.lower() for k in fact.keys]
        for n, chunk in enumerate(chunks, 1):
            header = f"[{n}] {unidecode(chunk.title)}\n".lower()
            text = unidecode(chunk.text).lower()
            if any(k in text for k in keys) and all(header in v for v in views):
                return n
        return NO_DATA if all(k not in v for k in keys for v in views) else None

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


def reply(answer: int | str, fact: Fact | None, turn: dict[Fact, int]) -> str:
    """The reply citing excerpt `answer`, or the refusal; `turn` counts each fact's replies."""
    if answer == NO_DATA or fact is None:
        return NO_DATA
    i = turn[fact] = turn.get(fact, -1) + 1
    frame = FRAMES[i % len(FRAMES)]
    text = frame.format(a=fact.answers[i // len(FRAMES) % len(fact.answers)], n=answer)
    if len(text.encode()) > REPLY_BYTES:
        raise SystemExit(f"{text!r} is over {REPLY_BYTES} bytes; shorten the fact's answer")
    return text


def questions() -> list[tuple[str, Fact | None]]:
    """Each fact's questions and the OUTSIDE ones (None: the file does not hold the answer),
    each also twice as typed on a phone."""
    rng = random.Random(SEED)
    asked = [(q, f) for f in FACTS.values() for q in f.asked] + [(q, None) for q in OUTSIDE]
    return [(q2, f) for q, f in asked for q2 in (q, typed(q, rng), typed(q, rng))]


def knowledge_rows(tokenizer: Any, suites: tuple[Path, ...] = SUITES) -> list[dict]:
    """The `/meshtastic` rows, then the follow-ups."""
    _check_keys(sight := Sight(tokenizer))
    turn: dict[Fact, int] = {}
    evals = [
        data.content_words(t.content)
        for suite in suites
        for item in load_suite(str(suite)).items
        for t in item.turns
        if t.role == "user"
    ]
    asked: set[str] = set()

    def new(*texts: str) -> bool:  # far from every eval prompt, not asked by another row
        key = " | ".join(data.normalize(t) for t in texts)
        fresh = key not in asked and all(data.far_from(t, evals) for t in texts)
        asked.add(key)
        return fresh

    rows = []
    for q, f in questions():
        turns = [("user", f"{KNOWLEDGE_COMMAND} {q}")]
        answer = sight.answer(turns, f)
        if answer is not None and new(turns[0][1]):
            rows.append(_row([q], [reply(answer, f, turn)]))
    for first, follows, then in FOLLOW_UPS:  # after three ways of asking the first question
        for q, follow in itertools.product(FACTS[first].asked[:3], follows.split("|")):
            turns = [("user", f"{KNOWLEDGE_COMMAND} {q}")]
            opening = sight.answer(turns, FACTS[first])
            if opening is None:
                continue
            said = reply(opening, FACTS[first], turn)
            turns += [("assistant", said), ("user", follow)]
            fact_then = FACTS[then] if then else None
            answer = sight.answer(turns, fact_then)
            if answer is not None and new(turns[0][1], follow):
                rows.append(_row([q, follow], [said, reply(answer, fact_then, turn)]))
    rng = random.Random(SEED)
    rows = _balanced(rows, rng)
    rng.shuffle(rows)  # so that a recipe's `shards` of the file samples every fact
    return rows


def _balanced(rows: list[dict], rng: random.Random) -> list[dict]:
    """The rows with refusals cut to REFUSAL_SHARE of them (chosen by `rng`, order kept): the
    retrieval misses many questions, and a model that sees mostly refusals learns to refuse."""
    refused = [i for i, r in enumerate(rows) if r["conversations"][-1]["value"] == NO_DATA]
    wanted = round((len(rows) - len(refused)) * REFUSAL_SHARE / (1 - REFUSAL_SHARE))
    dropped = set(refused) - set(rng.sample(refused, min(len(refused), wanted)))
    return [r for i, r in enumerate(rows) if i not in dropped]


def _check_keys(sight: Sight) -> None:
    """Every key of every fact is words of the knowledge file (else the table is wrong)."""
    text = "\n".join(unidecode(c.text).lower() for c in sight.kb.chunks)
    missing = [name for name, f in FACTS.items() for k in f.keys if k.lower() not in text]
    if missing:
        raise SystemExit(f"{sight.kb.path}: no chunk holds the key of {', '.join(missing)}; "
                         "fix FACTS in data/build_knowledge.py")  # fmt: skip


def _row(asked: list[str], replies: list[str]) -> dict:
    turns = []
    for i, (q, a) in enumerate(zip(asked, replies, strict=True)):
        text = f"{KNOWLEDGE_COMMAND} {q}" if i == 0 else q
        turns += [{"from": "human", "value": text}, {"from": "gpt", "value": a}]
    return {"category": "knowledge", "source": SOURCE, "conversations": turns}


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
