"""API v1's typed contract: strict validation with field paths, base64 under the byte cap, the schemas."""

from __future__ import annotations

import base64

import jsonschema
import msgspec
import pytest

from nsfw_core.base.errors import TooLarge
from nsfw_core.http import contract
from nsfw_core.http.contract import (
    BatchRequest,
    ClassifyRequest,
    ContractError,
    InvalidBase64,
    InvalidJSON,
    base64_cap,
    decode,
    image_bytes,
)


@pytest.mark.parametrize("raw,field,code", [
    (b'{"image": {"url": 5}}', "$.image.url", "invalid_request"),
    (b'{"image": {"url": "http://x/", "extra": 1}}', "$.image", "invalid_request"),
    (b'{"image": {"base64": "QQ=="}, "model": "ResNet"}', "$.model", "invalid_request"),
    (b'{"image": {"base64": "QQ=="}, "thresholds": {"adult": 1.5}}', "$.thresholds.adult", "invalid_request"),
    (b'{"image": {"base64": "QQ=="}, "thresholds": {"adult": "0.5"}}', "$.thresholds.adult", "invalid_request"),
    (b'{"image": {"base64": "QQ=="}, "id": true}', "$.id", "invalid_request"),
    (b'{"image": {"base64": "QQ=="}, "id": 9007199254740992}', "$.id", "invalid_request"),
    (b'{"image": {"base64": "QQ=="}, "id": "' + b"x" * 257 + b'"}', "$.id", "invalid_request"),
    (b'{}', "$", "invalid_request"),
    (b'[]', "$", "invalid_request"),
])
def test_a_body_that_does_not_match_names_the_field(raw, field, code):
    with pytest.raises(ContractError) as caught:
        decode(raw, ClassifyRequest)
    assert caught.value.code == code
    assert caught.value.status == 400
    assert caught.value.details["field"] == field
    assert caught.value.to_dict()["field"] == field


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"image": }'])
def test_malformed_json_is_invalid_json(raw):
    with pytest.raises(InvalidJSON) as caught:
        decode(raw, ClassifyRequest)
    assert caught.value.code == "invalid_json" and caught.value.status == 400


@pytest.mark.parametrize("model", contract.REQUESTS)
def test_invalid_utf8_in_a_string_is_invalid_json_for_every_request(model):
    """msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 inside a JSON string: before, it
    went past decode() and every JSON route answered 500 (the smoke pass)."""
    field = {"DecisionRequest": "label", "BatchRequest": "model"}.get(model.__name__, "id")
    for raw in (b'{"\xc3": 1}', b'{"%s": "\xff\xfe"}' % field.encode()):
        with pytest.raises(InvalidJSON) as caught:
            decode(raw, model)
        assert caught.value.code == "invalid_json" and caught.value.status == 400
    with pytest.raises(Exception) as batch:
        contract.decode_predict_batch(b'{"items": ["http://e.com/\xff"]}', 4)
    assert getattr(batch.value, "status", None) == 400, batch.value


def test_a_valid_body_decodes_into_the_model():
    req = decode(b'{"image": {"url": "https://e.com/a.jpg"}, "model": "InceptionV3", '
                 b'"thresholds": {"safe": 0.5}, "id": 7}', ClassifyRequest)
    assert req.image.url == "https://e.com/a.jpg" and req.image.base64 is None
    assert req.model == "InceptionV3" and req.thresholds is not None and req.thresholds.safe == 0.5
    assert req.id == 7
    batch = decode(b'{"items": [{"image": {"base64": "QQ=="}, "id": "a"}]}', BatchRequest)
    assert batch.items[0].id == "a"


def test_exactly_one_of_url_and_base64():
    for image in (contract.Image(), contract.Image(url="http://e.com/", base64="QQ==")):
        with pytest.raises(ContractError) as caught:
            contract.check_image(image, "$.image")
        assert caught.value.details["field"] == "$.image"
    contract.check_image(contract.Image(url="http://e.com/"), "$.image")


def test_a_lone_surrogate_id_is_refused():
    with pytest.raises(ContractError) as caught:  # msgspec refuses the escape itself
        decode(b'{"image": {"base64": "QQ=="}, "id": "\\ud800"}', ClassifyRequest)
    assert caught.value.status == 400
    with pytest.raises(ContractError) as caught:  # and should one get through, the id check does
        contract.check_id("\ud800", "$.id")
    assert caught.value.details["field"] == "$.id"


# ---------------------------------------------------------------- base64


def test_base64_with_whitespace_and_line_breaks_decodes():
    data = bytes(range(256)) * 3
    text = base64.encodebytes(data).decode()  # 76-character lines with \n
    assert "\n" in text
    assert image_bytes(text, 10_000, "$.x") == data
    assert image_bytes(" " + text.replace("\n", "\r\n") + "\t", 10_000, "$.x") == data


@pytest.mark.parametrize("text", ["QQ", "QQ=", "Q===", "QQ==QQ==", "QQ=A", "Q!==", "QUJD-_==", "####", "   "])
def test_bad_base64_is_invalid_base64(text):
    with pytest.raises(InvalidBase64) as caught:
        image_bytes(text, 1000, "$.image.base64")
    assert caught.value.code == "invalid_base64" and caught.value.status == 400
    assert caught.value.details["field"] == "$.image.base64"


def test_base64_over_the_cap_is_refused_on_its_length_before_decoding(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(base64, "b64decode", never)  # the module contract decodes with
    cap = 3000
    assert base64_cap(cap) == 4000
    with pytest.raises(TooLarge) as caught:
        image_bytes("A" * (base64_cap(cap) + 4), cap, "$.image.base64")
    assert caught.value.status == 413 and caught.value.code == "too_large"
    assert caught.value.details == {"limit": cap, "field": "$.image.base64"}
    with pytest.raises(TooLarge):
        image_bytes("A" * 100_000, cap, "$.image.base64")  # refused before even the whitespace is removed


def test_base64_at_the_cap_is_accepted_one_byte_over_is_not():
    cap = 3000
    assert len(image_bytes(base64.b64encode(b"x" * cap).decode(), cap, "$.b")) == cap
    with pytest.raises(TooLarge):
        image_bytes(base64.b64encode(b"x" * (cap + 1)).decode(), cap, "$.b")


# ---------------------------------------------------------------- schemas


def test_the_schemas_are_valid_json_schema_and_carry_the_limits():
    components = contract.schemas(max_bytes=3000, max_url_length=100, max_batch_items=5)
    doc = {"$defs": components}
    for name, schema in components.items():
        text = msgspec.json.encode(schema).replace(b"#/components/schemas/", b"#/$defs/")
        jsonschema.Draft202012Validator.check_schema(msgspec.json.decode(text))
        assert name in doc["$defs"]
    image = components["Image"]
    assert image["properties"]["base64"]["anyOf"][0]["maxLength"] == contract.base64_text_cap(3000)
    assert image["properties"]["url"]["anyOf"][0]["maxLength"] == 100
    assert components["BatchRequest"]["properties"]["items"]["maxItems"] == 5
    assert components["ClassifyRequest"]["additionalProperties"] is False
    assert components["ClassifyRequest"]["required"] == ["image"]
