"""The command registry: which `/words` are real Mesh Master commands."""

import pytest

from meshtune.commands import load_registry
from meshtune.errors import MeshtuneError

reg = load_registry()


def test_registry_knows_canonical_commands_aliases_and_admin_flags():
    assert reg.canonical("/weather") == "/weather"
    assert reg.canonical("/wx") == "/weather"
    assert reg.canonical("/CheckMail") == "/c"
    hops = next(c for c in reg.commands if c.name == "/hops")
    assert hops.admin and hops.usage == "/hops <0-7>"
    assert not next(c for c in reg.commands if c.name == "/nodes").admin
    assert len(reg.commands) >= 90


def test_known_nonexistent_commands_are_flagged_with_a_real_alternative():
    for fake in ["/relay", "/sms", "/bibleplan", "/911", "/emergency", "/chess", "/forest"]:
        (mention,) = reg.unknown(f"try {fake} now")
        assert mention.written == fake and mention.nonexistent
        assert reg.nonexistent[fake].instead


def test_invented_commands_are_unknown_but_not_listed_as_nonexistent():
    (m,) = reg.unknown("use /teleport to move")
    assert m.written == "/teleport" and m.canonical is None and not m.nonexistent


@pytest.mark.parametrize(
    "text",
    [
        "SNR/RSSI look fine",
        "coding rate 4/5",
        "see https://meshtastic.org/docs",
        "and/or",
        "24/7",
        "port ttyUSB0",
        "~/config",
        "a/c power",
    ],
)
def test_slashes_inside_words_are_not_commands(text):
    assert reg.mentions(text) == []


def test_mentions_keep_order_and_case_insensitivity():
    names = [m.canonical for m in reg.mentions("Send /Nodes, then (/node BOB) or /channels+dm.")]
    assert names == ["/nodes", "/node", "/channels+dm"]


def test_command_dump_fires_on_lists_and_stays_quiet_on_explanations():
    assert reg.is_command_dump("/nodes /mail /weather /jokes")
    assert reg.is_command_dump("Commands:\n- /nodes list\n- /mail send\n- /weather forecast")
    assert reg.is_command_dump("Use /nodes, /mail, /weather and /games.")
    assert not reg.is_command_dump("Send /nodes to see who the bot heard in the last day.")
    assert not reg.is_command_dump(
        "Try /trivia for a quiz, or /jokes if you want a laugh; /games lists every game "
        "the bot has on offer today."
    )


def test_a_users_own_registry_replaces_mesh_masters(tmp_path):
    path = tmp_path / "bot.yaml"
    path.write_text(
        "bot: TrailBot\ncommands:\n  - {name: beacon, aliases: [b], meaning: where I am}\n"
    )
    own = load_registry(path)
    assert own.bot == "TrailBot"
    assert own.canonical("/b") == "/beacon"
    assert own.unknown("/nodes") and not own.unknown("/beacon")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("bot: X\ncommands: [{name: /a}]\n", "registry field 'commands.0.meaning'"),
        ("bot: X\ncommands: [\n", "not valid YAML"),
        ("bot: X\ncommands: []\nextra: 1\n", "registry field 'extra'"),
    ],
)
def test_a_bad_registry_gets_a_one_line_error(tmp_path, content, expected):
    path = tmp_path / "bot.yaml"
    path.write_text(content)
    with pytest.raises(MeshtuneError, match=expected) as e:
        load_registry(path)
    assert "\n" not in str(e.value)


def test_a_missing_registry_says_so(tmp_path):
    with pytest.raises(MeshtuneError, match="cannot read registry"):
        load_registry(tmp_path / "nope.yaml")
