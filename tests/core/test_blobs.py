"""encrypted_content blobs round-trip for their own provider only."""

from __future__ import annotations

from streamgw.core.blobs import decode_blob, encode_blob


def test_round_trip_for_the_same_provider() -> None:
    blob = encode_blob("anthropic", {"thinking": "héllo", "signature": "sig=="})
    assert blob.startswith("gw1:") and "=" not in blob
    assert decode_blob(blob, "anthropic") == {"thinking": "héllo", "signature": "sig=="}


def test_other_providers_and_foreign_values_decode_to_none() -> None:
    blob = encode_blob("anthropic", {"signature": "s"})
    assert decode_blob(blob, "gemini") is None
    for value in (None, 42, "", "gw1:", "gw1:!!!", "gAAAAB-openai-opaque", "gw1:" + "e30"):
        assert decode_blob(value, "anthropic") is None
