"""Standard Webhooks signing against the spec's published example and the reference library."""

import base64
import os
import stat
from datetime import UTC, datetime

import pytest

from app.domain.signing import (
    InvalidSignature,
    generate_secret,
    new_message_id,
    secret_key,
    sign,
    signature_headers,
    verify,
)
from app.secretbox import SecretBox, load_or_create_key
from app.settings import Settings

# The example in the Standard Webhooks reference libraries' tests (test_sign_function).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signs_the_spec_example():
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    # the whsec_ prefix is optional in the key, as in the reference libraries
    assert sign(SPEC_SECRET.removeprefix("whsec_"), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) \
        == SPEC_SIGNATURE


def test_verifies_the_spec_example_and_returns_the_id():
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP),
               "webhook-signature": SPEC_SIGNATURE}
    assert verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP) == SPEC_ID
    capitalised = {name.title(): value for name, value in headers.items()}
    assert verify(SPEC_SECRET, capitalised, SPEC_BODY, now=SPEC_TIMESTAMP + 299) == SPEC_ID


def test_one_matching_signature_among_several_is_enough():
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP),
               "webhook-signature": f"v1,bm9wZQ== v2,abc {SPEC_SIGNATURE}"}
    assert verify(SPEC_SECRET, headers, SPEC_BODY, now=SPEC_TIMESTAMP) == SPEC_ID


@pytest.mark.parametrize("change", [
    {"body": b'{"test": 2432232315}'},
    {"webhook-id": "msg_other"},
    {"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="},
    {"webhook-signature": SPEC_SIGNATURE.replace("v1,", "v2,")},
    {"webhook-timestamp": str(SPEC_TIMESTAMP + 301)},
    {"webhook-timestamp": "soon"},
    {"webhook-id": ""},
])
def test_anything_changed_is_refused(change):
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP),
               "webhook-signature": SPEC_SIGNATURE}
    body = change.pop("body", SPEC_BODY)
    headers.update(change)
    with pytest.raises(InvalidSignature):
        verify(SPEC_SECRET, headers, body, now=SPEC_TIMESTAMP)


def test_old_and_future_timestamps_are_refused():
    headers = signature_headers(SPEC_SECRET, SPEC_ID, 1_700_000_000, b"{}")
    assert verify(SPEC_SECRET, headers, b"{}", now=1_700_000_000 - 300) == SPEC_ID
    for now in (1_700_000_000 - 301, 1_700_000_000 + 301):
        with pytest.raises(InvalidSignature):
            verify(SPEC_SECRET, headers, b"{}", now=now)


def test_generated_secrets_and_ids_have_the_expected_shape():
    secret = generate_secret()
    assert secret.startswith("whsec_") and len(secret_key(secret)) == 32
    assert secret != generate_secret()
    assert new_message_id().startswith("msg_") and new_message_id() != new_message_id()
    with pytest.raises(InvalidSignature):
        secret_key("whsec_not base64!")


def test_interoperates_with_the_standardwebhooks_library():
    import standardwebhooks  # the dev extra installs it: interop is checked, never skipped
    secret = generate_secret()
    body = b'{"type":"job.succeeded","data":{"id":"x"}}'
    now = datetime.now(UTC)
    ours = signature_headers(secret, "msg_1", int(now.timestamp()), body)
    library = standardwebhooks.Webhook(secret)
    assert library.verify(body.decode(), ours) == {"type": "job.succeeded", "data": {"id": "x"}}
    theirs = library.sign("msg_2", now, body.decode())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": theirs}
    assert verify(secret, headers, body, now=now.timestamp()) == "msg_2"


def test_secret_box_round_trips_and_refuses_another_key(tmp_path):
    box = SecretBox(["first key"])
    token = box.encrypt("whsec_abc")
    assert "whsec_abc" not in token and box.decrypt(token) == "whsec_abc"
    assert SecretBox(["new key", "first key"]).decrypt(token) == "whsec_abc"  # key rotation
    with pytest.raises(ValueError):
        SecretBox(["another key"]).decrypt(token)


def test_without_a_configured_key_one_is_generated_once_with_mode_600(tmp_path):
    path = tmp_path / "home" / "secret.key"
    key = load_or_create_key(path)
    assert len(base64.urlsafe_b64decode(key + "==")) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]
    settings = Settings(home=tmp_path / "home")
    assert SecretBox.from_settings(settings).decrypt(SecretBox([key]).encrypt("x")) == "x"
    configured = Settings(home=tmp_path / "home", secret_key="explicit")
    assert SecretBox.from_settings(configured).decrypt(SecretBox(["explicit"]).encrypt("y")) == "y"
