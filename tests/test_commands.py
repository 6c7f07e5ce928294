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


def test_message_is_an_alias_of_motd_not_of_mail():
    assert reg.canonical("/message") == "/motd"
    assert reg.canonical("/mail") == "/m"


def test_usage_is_in_the_registry_games_need_a_subcommand_and_quizzes_a_dm():
    wordle = reg.spec("/wordle")
    assert wordle.subcommands == ["start", "guess"] and not wordle.direct_only
    assert reg.spec("/trivia").direct_only and reg.spec("/morse").direct_only
    assert reg.spec("/hops").direct_only  # admin commands work only in a DM
    assert not reg.spec("/nodes").direct_only


@pytest.mark.parametrize(
    ("text", "channel", "kinds"),
    [
        ("Send /wordle to play.", False, ["subcommand"]),
        ("Send /wordle start, then /wordle guess crane.", False, []),
        ("Use /stopwatch start|stop|status.", False, []),
        ("Clear it with /wipe <what>.", False, []),
        ("Send /stop to mute me.", True, ["dm-only"]),
        ("DM me /stop to mute me.", True, []),
        ("Send /stop to mute me.", False, []),
        ("Send /wx for the forecast.", False, ["alias"]),
        ("Try /teleport.", False, []),  # unknown commands are W209's business
    ],
)
def test_misuses_name_what_is_wrong(text, channel, kinds):
    assert [m.kind for m in reg.misuses(text, channel)] == kinds


def test_a_name_listed_both_as_command_and_as_nonexistent_is_refused(tmp_path):
    path = tmp_path / "reg.yaml"
    path.write_text("bot: B\ncommands:\n  - {name: /a, meaning: x}\nnonexistent:\n  - {name: /a}\n")
    with pytest.raises(MeshtuneError, match="/a listed both as a command and as nonexistent"):
        load_registry(path)


def test_known_nonexistent_commands_are_flagged_with_a_real_alternative():
    for fake in ["/relay", "/sms", "/bibleplan", "/911", "/send", "/mute", "/local", "/network"]:
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
