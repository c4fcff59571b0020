"""The pure protocol module: requests, events and framing, bytes in and out."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fish_notebook.errors import ProtocolError, ValidationError
from fish_notebook.protocol import (
    Alignment,
    AudioEvent,
    ErrorEvent,
    FinishEvent,
    FlushEvent,
    LogEvent,
    Prosody,
    ReferenceAudio,
    StartEvent,
    StopEvent,
    TextEvent,
    TTSRequest,
    UnknownEvent,
    pack,
    resolve_model,
    unpack_client_event,
    unpack_server_event,
)
from tests.helpers import REQUEST_FIELDS


def test_request_defaults_are_the_clouds() -> None:
    """Defaults match PROTOCOL.md: mp3, 128 kbps, balanced, chunk 200, top_p/temperature 0.7."""
    wire = TTSRequest().to_wire()
    assert set(wire) == REQUEST_FIELDS
    assert wire["format"] == "mp3" and wire["mp3_bitrate"] == 128 and wire["latency"] == "balanced"
    assert wire["chunk_length"] == 200 and wire["min_chunk_length"] == 50
    assert wire["top_p"] == 0.7 and wire["temperature"] == 0.7 and wire["max_new_tokens"] == 1024
    assert wire["sample_rate"] is None and wire["prosody"] is None and wire["references"] == []
    assert wire["text"] == "" and wire["normalize"] is True


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("chunk_length", 50, "100..300"),
        ("chunk_length", 200.5, "int"),
        ("format", "flac", "'mp3'"),
        ("latency", "fast", "'low'"),
        ("mp3_bitrate", 100, "128"),
        ("top_p", 1.5, "0..1"),
        ("min_chunk_length", 101, "0..100"),
        ("sample_rate", 100, "8000"),
        ("normalize", "yes", "True or False"),
        ("reference_id", 12, "str"),
    ],
)
def test_bad_request_fields_name_field_value_and_range(
    field: str, value: object, words: str
) -> None:
    """A bad field raises ValidationError naming the field, the value and what is allowed."""
    with pytest.raises(ValidationError) as info:
        TTSRequest(**{field: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert field in message and repr(value) in message and words in message
    assert info.value.field == field


def test_prosody_ranges() -> None:
    """Speed 0.5..2.0 and volume -20..20 dB are enforced."""
    Prosody(speed=0.5, volume=-20)
    with pytest.raises(ValidationError, match="prosody.speed"):
        Prosody(speed=3.0)
    with pytest.raises(ValidationError, match="prosody.volume"):
        Prosody(volume=25)


def test_from_wire_accepts_nulls_and_ignores_unknown_keys() -> None:
    """A request with null fields and extra keys gets defaults for the nulls."""
    wire = {k: None for k in REQUEST_FIELDS} | {"format": "pcm", "something_new": 1}
    request = TTSRequest.from_wire(wire)
    assert request.format == "pcm" and request.chunk_length == 200 and request.references == ()


def test_sdk_start_event_decodes() -> None:
    """The official SDK's start frame, as it packs it, decodes to an equal request."""
    from fishaudio.types import Prosody as SdkProsody
    from fishaudio.types.tts import StartEvent as SdkStart
    from fishaudio.types.tts import TTSRequest as SdkRequest

    sdk = SdkStart(request=SdkRequest(text="", format="wav", prosody=SdkProsody(speed=1.5)))
    event = unpack_client_event(msgpack.packb(sdk.model_dump()))
    assert isinstance(event, StartEvent)
    assert event.request.format == "wav" and event.request.prosody == Prosody(speed=1.5)
    assert event.request.opus_bitrate == 32  # the SDK's kbps form is accepted


@pytest.mark.parametrize(
    "event", [TextEvent("hi"), FlushEvent(), StopEvent(), StartEvent(TTSRequest(format="pcm"))]
)
def test_client_events_round_trip(event: object) -> None:
    """Every client event packs to a map with its name and decodes back equal."""
    frame = pack(event)  # type: ignore[arg-type]
    assert msgpack.unpackb(frame)["event"] == event.event  # type: ignore[attr-defined]
    assert unpack_client_event(frame) == event


def test_server_events_round_trip() -> None:
    """Audio (with timestamps), finish, log and error events survive pack/unpack."""
    alignment = Alignment.from_wire(
        {"segments": [{"text": "hi", "start": 0.0, "end": 0.2}], "audio_duration": 0.3}
    )
    events = [
        AudioEvent(
            b"\x00\x01" * 10,
            content="hi",
            alignment=alignment,
            chunk_seq=0,
            chunk_audio_offset_sec=0.0,
            time=12.0,
        ),
        FinishEvent("stop"),
        FinishEvent("error", "bad frame"),
        LogEvent("unknown voice"),
        ErrorEvent("Concurrency limit exceeded", {"max_concurrency": 4}),
    ]
    for event in events:
        assert unpack_server_event(pack(event)) == event
    assert unpack_server_event(pack(events[-1])).max_concurrency == 4  # type: ignore[union-attr]


def test_unknown_server_event_is_kept() -> None:
    """An unknown server event becomes UnknownEvent with its data, never an error."""
    event = unpack_server_event(msgpack.packb({"event": "progress", "pct": 50}))
    assert isinstance(event, UnknownEvent) and event.name == "progress" and event.data["pct"] == 50


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"\xc1", "not valid MessagePack"),
        (msgpack.packb([1, 2]), "must be a MessagePack map"),
        (msgpack.packb({"text": "x"}), "no string 'event'"),
        (msgpack.packb({"event": "text", "text": 3}), "string 'text'"),
        (msgpack.packb({"event": "start"}), "'request' map"),
        (msgpack.packb({"event": "dance"}), "unknown client event 'dance'"),
        ("a text frame", "text frame"),
        (b"\x92\x01", "not valid MessagePack"),
    ],
)
def test_bad_client_frames_are_protocol_errors(frame: bytes, words: str) -> None:
    """Frames that are not a known map raise ProtocolError with a message saying why."""
    with pytest.raises(ProtocolError, match=words):
        unpack_client_event(frame)


def test_invalid_utf8_is_a_protocol_error() -> None:
    """A string field with invalid UTF-8 is reported as such."""
    frame = b"\x82\xa5event\xa4text\xa4text\xa2\xff\xfe"
    with pytest.raises(ProtocolError, match="UTF-8"):
        unpack_client_event(frame)


def test_audio_without_bytes_is_a_protocol_error() -> None:
    """An audio event whose audio is not bytes is refused."""
    with pytest.raises(ProtocolError, match="bytes"):
        unpack_server_event(msgpack.packb({"event": "audio", "audio": "abc"}))


def test_reference_audio_repr_hides_bytes() -> None:
    """Reprs of reference audio and audio events show sizes, not megabytes of bytes."""
    assert "<4 bytes>" in repr(ReferenceAudio(b"abcd", "hi"))
    assert "<3 bytes>" in repr(AudioEvent(b"abc"))


def test_model_fallback() -> None:
    """Known model names are kept; missing or unknown ones fall back to the default."""
    assert resolve_model("s1") == "s1" and resolve_model("speech-1.5") == "speech-1.5"
    assert resolve_model(None) == resolve_model("gpt-9") == "s2-pro"


def test_dialogue_voice_lists_round_trip_and_need_an_s2_model() -> None:
    """reference_id as a list and references as a list of lists go to the wire as sent;
    check_for_model refuses them for s1 and legacy models, naming the field and the fix."""
    sample = {"audio": b"ab", "text": "hi"}
    wire = {"reference_id": ["v0", "v1"], "references": [[sample], [sample, sample]]}
    request = TTSRequest.from_wire(wire)
    assert request.reference_id == ("v0", "v1") and request.multi_speaker
    assert [len(speaker) for speaker in request.references] == [1, 2]
    assert {k: request.to_wire()[k] for k in wire} == wire
    for model in ("s2-pro", "s2.1-pro", "s2.1-pro-free", None, "unknown"):
        request.check_for_model(model)  # the cloud's default model is an S2 one
    for model in ("s1", "speech-1.5"):
        with pytest.raises(ValidationError, match=r"reference_id.*S2 model.*'s2-pro'"):
            request.check_for_model(model)
    nested = TTSRequest(references=[[ReferenceAudio(b"a", "x")], [ReferenceAudio(b"b", "y")]])
    with pytest.raises(ValidationError, match="references"):
        nested.check_for_model("s1")
    TTSRequest(reference_id="one-voice", references=[sample]).check_for_model("s1")
    with pytest.raises(ValidationError, match="all samples or all lists"):
        TTSRequest(references=[sample, [sample]])


@given(st.text())
def test_any_text_round_trips(text: str) -> None:
    """Any unicode text survives a text event round trip."""
    assert unpack_client_event(pack(TextEvent(text))) == TextEvent(text)


@given(st.binary(max_size=64))
def test_random_bytes_never_crash_the_decoder(frame: bytes) -> None:
    """Random bytes decode to an event or raise ProtocolError/ValidationError, nothing else."""
    try:
        unpack_client_event(frame)
    except (ProtocolError, ValidationError):
        pass
    try:
        unpack_server_event(frame)
    except ProtocolError:
        pass
