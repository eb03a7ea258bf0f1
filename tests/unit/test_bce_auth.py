"""BCE auth v1 verification, as specified in qianfan-finetuning.md §5."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from tunehouse.api.qianfan.auth import MAX_DERIVED, derived_key
from tunehouse.api.qianfan.signing import AuthFailure, canonical_request, verify
from tunehouse.core.credential_cache import SigningHit

AK, SK = "AKEXAMPLE", "SKEXAMPLE"
STAMP = "2024-05-01T08:00:00Z"
SIGNED_AT = datetime(2024, 5, 1, 8, 0, 0, tzinfo=UTC)
PATH = "/v2/finetuning"
QUERY = [("Action", "DescribeFineTuningTask")]
HEADERS = {
    "content-type": "application/json",
    "host": "127.0.0.1:8080",
    "request-source": "qianfan_py_sdk_v0.4.12.3",
    "x-bce-date": STAMP,
}
SPEC_CANONICAL = (
    "POST\n/v2/finetuning\nAction=DescribeFineTuningTask\ncontent-type:application%2Fjson\n"
    "host:127.0.0.1%3A8080\nrequest-source:qianfan_py_sdk_v0.4.12.3\nx-bce-date:2024-05-01T08%3A00%3A00Z"
)
SPEC_SIGNATURE = "c5dd382bca255f87cefcea382059ae2e0d728ca4a150897302317d1b0a449a8d"
SPEC_SIGNED = "content-type;host;request-source;x-bce-date"


def reference_signature(secret: str, prefix: str, canonical: str) -> str:
    """Steps 4 and 9 of the spec, written out independently of the code under test."""
    signing_key = hmac.new(secret.encode(), prefix.encode(), hashlib.sha256).hexdigest()
    return hmac.new(signing_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def auth_header(signature: str, signed: str = SPEC_SIGNED, ak: str = AK, expiration: int = 300) -> str:
    return f"bce-auth-v1/{ak}/{STAMP}/{expiration}/{signed}/{signature}"


def find_secret(access_key: str) -> str | None:
    return SK if access_key == AK else None


def check(
    authorization: str | None,
    now: datetime = SIGNED_AT + timedelta(seconds=5),
    query: list[tuple[str, str]] = QUERY,
    headers: dict[str, str] = HEADERS,
    secret_lookup=find_secret,
) -> str:
    all_headers = dict(headers)
    if authorization is not None:
        all_headers["authorization"] = authorization
    return verify("POST", PATH, query, all_headers, secret_lookup, now=now)


def failure(authorization: str | None, **kwargs) -> AuthFailure:
    with pytest.raises(AuthFailure) as info:
        check(authorization, **kwargs)
    return info.value


# --- the worked example -----------------------------------------------------------------------------


def test_canonical_request_of_the_worked_example_matches_the_spec():
    signed = SPEC_SIGNED.split(";")
    assert canonical_request("POST", PATH, QUERY, HEADERS, signed) == SPEC_CANONICAL


def test_worked_example_verifies_and_returns_the_access_key():
    assert check(auth_header(SPEC_SIGNATURE)) == AK


@pytest.mark.parametrize(
    "signed",
    [
        "host;x-bce-date;request-source;content-type",
        "x-bce-date;request-source;content-type;host",
        "request-source;host;content-type;x-bce-date",
    ],
)
def test_signed_header_list_in_any_order_verifies(signed):
    assert check(auth_header(SPEC_SIGNATURE, signed=signed)) == AK


# --- 403: who signed, and with what ------------------------------------------------------------------


def test_signature_made_with_a_wrong_secret_is_403_signature_does_not_match():
    prefix = f"bce-auth-v1/{AK}/{STAMP}/300"
    forged = reference_signature("NOT-THE-SECRET", prefix, SPEC_CANONICAL)

    err = failure(auth_header(forged))

    assert err.status == 403
    assert err.code == "SignatureDoesNotMatch"


def test_changing_a_signed_header_value_after_signing_is_403_signature_does_not_match():
    err = failure(auth_header(SPEC_SIGNATURE), headers={**HEADERS, "host": "127.0.0.1:9090"})

    assert (err.status, err.code) == (403, "SignatureDoesNotMatch")


def test_changing_the_query_after_signing_is_403_signature_does_not_match():
    err = failure(auth_header(SPEC_SIGNATURE), query=[("Action", "DeleteFineTuningTask")])

    assert (err.status, err.code) == (403, "SignatureDoesNotMatch")


def test_unknown_access_key_is_403_could_not_find_credential():
    err = failure(auth_header(SPEC_SIGNATURE, ak="AKUNKNOWN"))

    assert err.status == 403
    assert "Could not find credential" in err.header_message


# --- 401: the header itself --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("", id="empty"),
        pytest.param(f"bce-auth-v2/{AK}/{STAMP}/300/{SPEC_SIGNED}/{SPEC_SIGNATURE}", id="wrong-prefix"),
        pytest.param(f"bce-auth-v1/{AK}/{STAMP}/300/{SPEC_SIGNATURE}", id="five-parts"),
        pytest.param(f"bce-auth-v1/{AK}/{STAMP}/300/{SPEC_SIGNED}/{SPEC_SIGNATURE}/x", id="seven-parts"),
        pytest.param(
            f"bce-auth-v1/{AK}/2024-05-01 08:00:00/300/{SPEC_SIGNED}/{SPEC_SIGNATURE}", id="bad-timestamp"
        ),
        pytest.param(f"bce-auth-v1/{AK}/{STAMP}/soon/{SPEC_SIGNED}/{SPEC_SIGNATURE}", id="bad-expiration"),
    ],
)
def test_missing_or_malformed_authorization_is_401_access_denied(authorization):
    err = failure(authorization)

    assert (err.status, err.code) == (401, "AccessDenied")


def test_signature_that_does_not_sign_host_is_401_even_when_correct():
    canonical = f"POST\n{PATH}\nAction=DescribeFineTuningTask\nx-bce-date:2024-05-01T08%3A00%3A00Z"
    signature = reference_signature(SK, f"bce-auth-v1/{AK}/{STAMP}/300", canonical)

    err = failure(auth_header(signature, signed="x-bce-date"))

    assert (err.status, err.code) == (401, "AccessDenied")


# --- 401: time window ---------------------------------------------------------------------------------


def test_request_after_its_expiration_is_401():
    err = failure(auth_header(SPEC_SIGNATURE), now=SIGNED_AT + timedelta(seconds=301))

    assert (err.status, err.code) == (401, "AccessDenied")


def test_request_at_the_last_second_of_its_expiration_is_accepted():
    assert check(auth_header(SPEC_SIGNATURE), now=SIGNED_AT + timedelta(seconds=300)) == AK


def test_request_signed_more_than_300_seconds_in_the_future_is_401():
    err = failure(auth_header(SPEC_SIGNATURE), now=SIGNED_AT - timedelta(seconds=301))

    assert (err.status, err.code) == (401, "AccessDenied")


@pytest.mark.parametrize("ahead_s", [1, 120, 300])
def test_request_signed_slightly_in_the_future_within_the_skew_is_accepted(ahead_s):
    assert check(auth_header(SPEC_SIGNATURE), now=SIGNED_AT - timedelta(seconds=ahead_s)) == AK


# --- canonical query and headers ----------------------------------------------------------------------


def test_query_parameters_are_percent_encoded_and_sorted():
    query = [("zeta", "a b:c/d"), ("Action", "CreateFineTuningTask"), ("lang", "中")]
    # By hand, per spec step 6: enc() each name and value (space %20, ':' %3A, '/' %2F, UTF-8 bytes in
    # uppercase hex), then sort the 'name=value' strings byte-wise.
    by_hand = "Action=CreateFineTuningTask&lang=%E4%B8%AD&zeta=a%20b%3Ac%2Fd"
    canonical = "\n".join(["POST", PATH, by_hand, SPEC_CANONICAL.split("\n", 3)[3]])
    signature = reference_signature(SK, f"bce-auth-v1/{AK}/{STAMP}/300", canonical)

    assert canonical_request("POST", PATH, query, HEADERS, SPEC_SIGNED.split(";")) == canonical
    assert check(auth_header(signature), query=query) == AK


def test_an_authorization_query_parameter_is_left_out_of_the_canonical_query():
    query = [*QUERY, ("authorization", "whatever")]

    assert check(auth_header(SPEC_SIGNATURE), query=query) == AK


def test_signed_header_absent_from_the_request_is_left_out_of_the_canonical_headers():
    signature = reference_signature(SK, f"bce-auth-v1/{AK}/{STAMP}/300", SPEC_CANONICAL)

    assert check(auth_header(signature, signed=SPEC_SIGNED + ";x-bce-request-id")) == AK


def test_signed_header_values_are_trimmed_before_signing():
    headers = {**HEADERS, "host": "  127.0.0.1:8080  "}

    assert check(auth_header(SPEC_SIGNATURE), headers=headers) == AK


# --- signing keys remembered with the credential cache's hit (api.qianfan.auth.derived_key) -----------


def test_a_remembered_signing_key_is_the_one_derived_for_that_auth_prefix():
    hit = SigningHit(1, SK)
    first, second = f"bce-auth-v1/{AK}/{STAMP}/300", f"bce-auth-v1/{AK}/2024-05-01T08:00:01Z/300"
    for _ in range(2):  # derived, then remembered
        assert derived_key(hit, first) == hmac.new(SK.encode(), first.encode(), hashlib.sha256).hexdigest()
        assert derived_key(hit, second) == hmac.new(SK.encode(), second.encode(), hashlib.sha256).hexdigest()


def test_a_request_verified_with_remembered_signing_keys_is_judged_as_without_them():
    hit = SigningHit(1, SK)

    def derive(secret: str, prefix: str) -> str:
        return derived_key(hit, prefix)

    headers = {**HEADERS, "authorization": auth_header(SPEC_SIGNATURE)}
    now = SIGNED_AT + timedelta(seconds=5)
    for _ in range(2):
        assert verify("POST", PATH, QUERY, headers, find_secret, now=now, derive=derive) == AK
    tampered = {**headers, "request-source": "other"}
    with pytest.raises(AuthFailure) as info:
        verify("POST", PATH, QUERY, tampered, find_secret, now=now, derive=derive)
    assert info.value.code == "SignatureDoesNotMatch"


def test_a_hit_remembers_a_bounded_number_of_signing_keys():
    hit = SigningHit(1, SK)
    for second in range(10 * MAX_DERIVED):
        derived_key(hit, f"bce-auth-v1/{AK}/2024-05-01T08:{second // 60:02d}:{second % 60:02d}Z/300")
    assert len(hit.derived) <= MAX_DERIVED
