"""Prompt files: the three forms parse to the same requests, and every refusal says exactly why."""

from __future__ import annotations

import json
from pathlib import PurePath
from typing import Any

import jsonschema
import pytest

from timbred.errors import InvalidParams
from timbred.protocol.schema import load, openrpc
from timbred.watch import promptfile
from timbred.watch.promptfile import PromptRequest, check_output_name, parse


def refusal(name: str, data: bytes, **kwargs: Any) -> InvalidParams:
    """The InvalidParams that parsing ``data`` as ``name`` raises."""
    with pytest.raises(InvalidParams) as info:
        parse(name, data, **kwargs)
    return info.value


class TestForms:
    def test_export_values_in_text_headers(self) -> None:
        """Headers for enum and number-or-false keys get their JSON types."""
        [req] = parse("a.txt", b"format: mp3\nmp3_bitrate_kbps: 192\n"
                               b"loudness_target_lufs: false\n\nx")
        assert req.export == {"format": "mp3", "mp3_bitrate_kbps": 192,
                              "loudness_target_lufs": False}

    def test_plain_text_is_all_prompt(self) -> None:
        """A .txt file without headers is one prompt: the whole file, whitespace stripped."""
        [req] = parse("calm.txt", b"\n  A calm piano piece\nwith soft strings  \n")
        assert req.params == {"prompt": "A calm piano piece\nwith soft strings"}
        assert (req.index, req.output, req.preset, req.export) == (1, None, None, {})

    def test_txt_headers_are_typed(self) -> None:
        """Header values become the parameters' types; keys fold case and accept '-'."""
        [req] = parse("a.txt", b"Duration: 12.5\nseed: 7\nTop-K: 50\nmodel: 'musicgen-small'\n"
                               b"format: flac\npreset: lofi\noutput: intro\n\nA prompt\n")
        assert req.params == {"prompt": "A prompt", "duration": 12.5, "seed": 7, "top_k": 50,
                              "model": "musicgen-small"}
        assert req.export == {"format": "flac"}
        assert (req.preset, req.output, req.line) == ("lofi", "intro", 9)

    def test_txt_blocks_separated_by_dashes(self) -> None:
        """'---' separates prompts; each block has its own headers."""
        reqs = parse("set.txt", b"duration: 5\n\nfirst\n---\nsecond\n---\nseed: 3\n\nthird\n")
        assert [r.params for r in reqs] == [
            {"prompt": "first", "duration": 5}, {"prompt": "second"},
            {"prompt": "third", "seed": 3}]
        assert [r.index for r in reqs] == [1, 2, 3]

    def test_prose_that_looks_like_a_header_stays_prompt(self) -> None:
        """One 'Word: text' line, or such a line followed by prose, is not a header."""
        assert parse("a.txt", b"Style: lo-fi hip hop")[0].params["prompt"] == \
            "Style: lo-fi hip hop"
        assert parse("a.txt", b"\nStyle: lo-fi\n\nwith rain")[0].params["prompt"] == \
            "Style: lo-fi\n\nwith rain"

    def test_json_one_request(self) -> None:
        """A JSON object is one request; export keys go to the export part."""
        [req] = parse("a.json", json.dumps({
            "prompt": "x", "duration": 3, "seed": 4.0, "variations": 2, "format": "mp3",
            "mp3_bitrate_kbps": 192, "loudness_target_lufs": -14, "output": "take"}).encode())
        assert req.params == {"prompt": "x", "duration": 3, "seed": 4, "variations": 2}
        assert isinstance(req.params["seed"], int)
        assert req.export == {"format": "mp3", "mp3_bitrate_kbps": 192,
                              "loudness_target_lufs": -14}

    def test_toml_prompts_tables(self) -> None:
        """[[prompts]] tables in TOML give several requests, in order."""
        reqs = parse("b.TOML", b'[[prompts]]\nprompt = "one"\nguidance = 4.5\n\n'
                               b'[[prompts]]\nprompt = "two"\npriority = -3\n')
        assert [r.params for r in reqs] == [{"prompt": "one", "guidance": 4.5},
                                            {"prompt": "two", "priority": -3}]

    def test_output_suffix_sets_the_format(self) -> None:
        """An output name's audio suffix sets format and is dropped from the name."""
        [req] = parse("a.json", b'{"prompt": "x", "output": "Intro v2.MP3"}')
        assert (req.output, req.export) == ("Intro v2", {"format": "mp3"})

    def test_relative_audio_paths_resolve_against_the_folder(self) -> None:
        """melody/continuation relative to the prompt file's folder become absolute."""
        [req] = parse("a.txt", b"continuation: clips/a.wav\nmelody: /abs/m.wav\n\nx")
        based = req.with_base(PurePath("/music/inbox"))
        assert based.params["continuation"] == "/music/inbox/clips/a.wav"
        assert based.params["melody"] == "/abs/m.wav"

    def test_a_variation_names_its_init_audio_and_strength(self) -> None:
        """init resolves like the other audio inputs; strength is read as a number and
        checked against the schema's range."""
        [req] = parse("a.txt", b"init: takes/groove.flac\nstrength: 0.4\n\nbrighter")
        based = req.with_base(PurePath("/music/inbox"))
        assert based.params["init"] == "/music/inbox/takes/groove.flac"
        assert based.params["strength"] == 0.4
        with pytest.raises(InvalidParams, match="strength"):
            parse("a.txt", b"init: a.wav\nstrength: 1.5\n\nx")

    def test_a_song_has_its_lyrics_after_the_prompt(self) -> None:
        """In a .txt block a line holding only "lyrics:" ends the prompt; the rest of the
        block is sung, its blank lines and section tags kept. TOML and JSON take a string."""
        text = ("model: /m/ace\nlanguage: ja\nbpm: 92\nkey: A minor\n\nwarm rhodes ballad\n"
                "Lyrics:\n[verse]\n東京の夜\n\n[chorus]\nla la\n---\nno words here\n")
        song, plain = parse("a.txt", text.encode())
        assert song.params["prompt"] == "warm rhodes ballad"
        assert song.params["lyrics"] == "[verse]\n東京の夜\n\n[chorus]\nla la"
        assert (song.params["language"], song.params["bpm"], song.params["key"]) == \
            ("ja", 92, "A minor")
        assert "lyrics" not in plain.params
        [toml] = parse("a.toml", b'prompt = "ballad"\nlyrics = """\n[verse]\nhello\n"""\n')
        assert toml.params["lyrics"] == "[verse]\nhello\n"
        with pytest.raises(InvalidParams, match=r"line 4: lyrics is given twice \(first on "
                           r"line 1\)"):
            parse("a.txt", b"lyrics: one line\n\nprompt\nlyrics:\nmore")
        with pytest.raises(InvalidParams, match="key"):
            parse("a.txt", b"key: H major\n\nballad")

    def test_round_trip(self) -> None:
        """to_dict/from_dict keep a request intact (it is stored as JSON)."""
        [req] = parse("a.txt", b"duration: 2\noutput: x.ogg\nogg_quality: 0.5\n\nhi")
        assert PromptRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req

    def test_utf8_bom_is_accepted(self) -> None:
        """A UTF-8 byte-order mark (Windows editors) is skipped."""
        assert parse("a.json", b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9"}')[0].params == \
            {"prompt": "café"}


class TestRefusals:
    @pytest.mark.parametrize(("name", "data", "words"), [
        ("a.json", b'{"prompt": "x",}', "bad JSON at line 1, column 16"),
        ("a.toml", b'prompt = "x"\nduration = \n', "bad TOML at line 2, column 12"),
        ("a.toml", b'prompt = "unterminated\n', "bad TOML at line 1"),
        ("a.json", b'{"prompt": "x", "prompt": "y"}', "key 'prompt' appears twice"),
        ("a.json", b'{"prompt": "x", "duration": NaN}', "NaN is not a number JSON allows"),
    ])
    def test_bad_syntax_names_the_position(self, name: str, data: bytes, words: str) -> None:
        """Syntax errors say where (line, column) and what."""
        assert words in str(refusal(name, data))

    @pytest.mark.parametrize(("name", "data", "words", "param"), [
        ("a.toml", b'prompt = "x"\ndurations = 3\n',
         "unknown key 'durations' (did you mean 'duration'?)", "durations"),
        ("a.txt", b"durration: 10\n\nx", "line 1: unknown key 'durration'", "durration"),
        ("a.txt", b"Style: lo-fi\n\nwith rain", "start the block with a blank line", "style"),
        ("a.json", b'{"prompts": [{"prompt": "a"}], "seed": 1}', "unknown key 'seed' beside",
         "seed"),
        ("a.json", b'{"duration": 3}', "missing key 'prompt'", "prompt"),
    ])
    def test_unknown_and_missing_keys(self, name: str, data: bytes, words: str,
                                      param: str) -> None:
        """Unknown keys are refused (with a suggestion); a missing prompt is named."""
        exc = refusal(name, data)
        assert words in str(exc)
        assert exc.data["param"] == param

    @pytest.mark.parametrize(("name", "data", "words"), [
        ("a.txt", b"duration: 900\n\nx",
         "line 1: duration: 900 is out of range; allowed: at least 0.1 and at most 600"),
        ("a.txt", b"duration: ten\n\nx",
         "line 1, column 11: duration: expected a number, got \"ten\" (at least 0.1 and at "
         "most 600)"),
        ("a.toml", b'[[prompts]]\nprompt = "x"\n[[prompts]]\nprompt = "y"\ntop_k = 5000\n',
         "prompt 2: top_k: 5000 is out of range; allowed: at least 0 and at most 2048"),
        ("a.toml", b'prompt = "x"\nseed = 1.5\n', "seed: expected an integer, got 1.5"),
        ("a.json", b'{"prompt": "x", "format": "aiff"}',
         'format: "aiff" is not allowed; allowed: one of "wav", "flac", "mp3", "ogg"'),
        ("a.json", b'{"prompt": "x", "duration": true}', "expected a number, got true"),
        ("a.json", b'{"prompt": "x", "format": "wav", "mp3_bitrate_kbps": 128}',
         "mp3_bitrate_kbps applies to format 'mp3' only, but format is 'wav'"),
        ("a.json", b'{"prompt": "x", "format": "wav", "output": "a.mp3"}',
         "output 'a.mp3' implies format 'mp3' but format is 'wav'"),
        ("a.txt", b"mp3_bitrate_kbps: 100\n\nx",
         "line 1: mp3_bitrate_kbps: 100 is not allowed; allowed: one of 32, 40, 48"),
        ("a.txt", b"loudness_target_lufs: loud\n\nx",
         "loudness_target_lufs: \"loud\" is not allowed; allowed: a number (at least "),
        ("a.json", b'{"prompt": "x", "ogg_quality": 5}',
         "ogg_quality: 5 is out of range; allowed: at least 0 and at most 1"),
        ("a.json", b'{"prompt": "x", "preset": "' + b"p" * 101 + b'"}',
         "preset is too long: 101 characters; allowed: at most 100"),
    ])
    def test_values_name_key_value_and_range(self, name: str, data: bytes, words: str) -> None:
        """A bad value's message names the key, the value and the allowed range."""
        assert words in str(refusal(name, data))

    def test_number_or_false_names_both(self) -> None:
        """A key that takes a number or false says so."""
        assert "at most 0) or false" in str(
            refusal("a.txt", b"loudness_target_lufs: loud\n\nx"))

    def test_range_is_in_the_data_too(self) -> None:
        """data carries the key, the value and the allowed range for clients."""
        exc = refusal("a.json", b'{"prompt": "x", "variations": 17}')
        assert exc.data["param"] == "variations"
        assert exc.data["value"] == 17
        assert exc.data["allowed"]["maximum"] == 16

    @pytest.mark.parametrize(("data", "words"), [
        (b"hello \x00 world", "binary content: NUL byte at byte offset 6"),
        (b"hello \x07 world", "binary content: control character U+0007 at line 1, column 7"),
        (b"caf\xe9 au lait", "not UTF-8: invalid byte 0xe9 at byte offset 3 (line 1, column 4)"),
        (b"ok\nsecond line \xff", "byte offset 15 (line 2, column 13)"),
        ("x".encode("utf-16"), "the file is UTF-16 text"),
    ])
    def test_binary_and_encoding(self, data: bytes, words: str) -> None:
        """Binary and non-UTF-8 content is refused with the byte offset."""
        assert words in str(refusal("a.txt", data))

    @pytest.mark.parametrize(("name", "data", "words"), [
        ("a.txt", b"  \n\n ", "empty: the file holds no prompt"),
        ("a.txt", b"duration: 9\n", "empty prompt: headers but no prompt"),
        ("a.txt", b"a\n---\n", "prompt 2 is empty (after the '---' on line 2"),
        ("a.json", b'{"prompt": ""}', "prompt is empty"),
        ("a.json", b'{"prompt": "   "}', "the prompt is only whitespace"),
        ("a.json", b'{"prompts": []}', "prompts is empty"),
    ])
    def test_empty_prompts(self, name: str, data: bytes, words: str) -> None:
        """An empty file, block or prompt is refused."""
        assert words in str(refusal(name, data))

    def test_size_cap(self) -> None:
        """Data over the cap is refused by size, naming both numbers."""
        exc = refusal("a.txt", b"x" * 101, max_bytes=100)
        assert "too large: 101 bytes; prompt files are limited to 100 bytes" in str(exc)
        with pytest.raises(InvalidParams, match="52428800 bytes"):
            promptfile.check_size("big.txt", 50 * 1024 * 1024)

    def test_misplaced_header(self) -> None:
        """A known header after a leading blank line is pointed out, not silently prompt."""
        assert "headers must start on the block's first line" in str(
            refusal("a.txt", b"\nduration: 9\n\nx"))

    def test_header_without_blank_line(self) -> None:
        """Headers must end with a blank line before the prompt."""
        assert "line 2: expected 'key: value' or a blank line" in str(
            refusal("a.txt", b"duration: 9\nA song"))

    def test_too_many_prompts(self) -> None:
        """A file holds at most MAX_PROMPTS prompts."""
        data = "\n---\n".join(["x"] * (promptfile.MAX_PROMPTS + 1)).encode()
        assert "too many prompts: 65" in str(refusal("a.txt", data))

    def test_not_a_prompt_suffix(self) -> None:
        """Only .txt, .toml and .json are prompt files."""
        assert "must end in one of .txt, .toml, .json" in str(refusal("a.md", b"x"))


class TestOutputNames:
    @pytest.mark.parametrize(("value", "words"), [
        ("../evil", "would escape the output folder"),
        ("a/b", "would escape the output folder"),
        ("a\\b", "would escape the output folder"),
        ("..", "would escape the output folder"),
        ("/etc/passwd", "is an absolute path"),
        ("C:evil", "is an absolute path"),
        (".hidden", "starts with a dot"),
        ("a\nb", "control characters"),
        ("é" * 101, "longer than 200 bytes"),
        (".wav", "starts with a dot"),
    ])
    def test_unsafe_names_are_refused(self, value: str, words: str) -> None:
        """Names that would leave the output folder (or hide) are refused with the reason."""
        with pytest.raises(ValueError, match=words):
            check_output_name(value)
        exc = refusal("a.json", json.dumps({"prompt": "x", "output": value}).encode())
        assert words in str(exc)
        assert exc.data["param"] == "output"

    def test_plain_names(self) -> None:
        """Plain names pass; an audio suffix becomes the implied format."""
        assert check_output_name("take one") == ("take one", None)
        assert check_output_name("v1.2") == ("v1.2", None)
        assert check_output_name("x.FLAC") == ("x", "flac")


class TestSchema:
    def test_ranges_match_generate_submit(self) -> None:
        """Every key generate.submit also takes has exactly its schema there (output aside:
        here it is a name, there a path)."""
        method = next(m for m in openrpc()["methods"] if m["name"] == "generate.submit")
        submit = {p["name"]: p["schema"] for p in method["params"] if p["name"] != "output"}
        request = load(promptfile.SCHEMA_NAME)["$defs"]["request"]["properties"]
        shared = set(submit) & set(request)
        assert set(promptfile.GENERATION_KEYS) <= shared
        for key in shared:
            def plain(schema: dict[str, Any]) -> dict[str, Any]:
                return {k: v for k, v in schema.items() if k != "description"}
            assert plain(request[key]) == plain(submit[key]), key

    def test_keys_and_limits_agree_with_the_module(self) -> None:
        """The schema's keys and maxItems are the module's."""
        doc = load(promptfile.SCHEMA_NAME)
        keys = set(doc["$defs"]["request"]["properties"])
        assert keys == {*promptfile.GENERATION_KEYS, *promptfile.EXPORT_KEYS, "preset", "output"}
        assert doc["$defs"]["batch"]["properties"]["prompts"]["maxItems"] == \
            promptfile.MAX_PROMPTS
        assert doc["$id"] == "https://timbre.invalid/schemas/promptfile.schema.json"

    def test_examples_validate(self) -> None:
        """Documents the parser accepts are valid against the published schema."""
        doc = load(promptfile.SCHEMA_NAME)
        jsonschema.Draft202012Validator.check_schema(doc)
        validator = jsonschema.Draft202012Validator(doc)
        validator.validate({"prompt": "x", "duration": 5, "output": "intro.mp3"})
        validator.validate({"prompts": [{"prompt": "a"}, {"prompt": "b", "preset": "lofi"}]})
        assert not validator.is_valid({"prompt": "x", "output": "../x"})
