"""The live bundle channel's pure parts: the poll a request asks for and every refusal (table), the
namespace rule, how long a TokenReview is trusted, and the sidecar's reconnect backoff (bounded,
jittered, honouring Retry-After)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera import protocol
from tessera.core import channel
from tessera.sidecar import channel as subscriber


def test_a_poll_with_defaults_and_a_too_long_wait_shortened() -> None:
    assert channel.poll("shop", {}) == channel.Poll("shop", 0, protocol.DEFAULT_WAIT_SECONDS)
    assert channel.poll("shop", {"after": "17", "wait": "3600"}) == channel.Poll("shop", 17, protocol.MAX_WAIT_SECONDS)
    assert protocol.bundle_target("shop", 17, 30) == "/bundles/shop?after=17&wait=30"


BAD_POLLS = [
    ("Shop", {}, "bad_namespace"),
    ("a" * 64, {}, "bad_namespace"),
    ("shop", {"after": "-1"}, "bad_parameter"),
    ("shop", {"after": "1e3"}, "bad_parameter"),
    ("shop", {"wait": ""}, "bad_parameter"),
    ("shop", {"after": "9" * 17}, "bad_parameter"),
    ("shop", {"since": "1"}, "bad_parameter"),
]


@pytest.mark.parametrize(("namespace", "query", "reason"), BAD_POLLS)
def test_bad_polls_are_400_with_a_reason(namespace: str, query: dict[str, str], reason: str) -> None:
    with pytest.raises(channel.Refused) as refused:
        channel.poll(namespace, query)
    assert (refused.value.status, refused.value.reason) == (400, reason)


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ([], "missing_token"),
        (["Bearer a", "Bearer b"], "multiple_authorization_headers"),
        (["Basic eDp5"], "not_a_bearer_token"),
        (["Bearer"], "not_a_bearer_token"),
        (["Bearer a b"], "not_a_bearer_token"),
    ],
)
def test_credentials_other_than_one_bearer_token_are_401(authorization: list[str], reason: str) -> None:
    with pytest.raises(channel.Refused) as refused:
        channel.bearer(authorization)
    assert (refused.value.status, refused.value.reason) == (401, reason)
    challenge = refused.value.headers()["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="tessera"') and ("error=" in challenge) == (reason != "missing_token")
    assert channel.bearer(["bearer  tok.en "]) == "tok.en"


def test_a_token_reads_only_its_own_namespace() -> None:
    channel.may_read("shop", channel.Poll("shop", 0, 0))
    with pytest.raises(channel.Refused) as refused:
        channel.may_read("shop", channel.Poll("tenant-a", 0, 0))
    assert (refused.value.status, refused.value.reason) == (403, "other_namespace")


def test_a_review_is_trusted_for_a_while_never_past_the_tokens_expiry() -> None:
    assert channel.trusted_until(100.0, None, accepted=True) == 100.0 + channel.REVIEW_TTL_SECONDS
    assert channel.trusted_until(100.0, 160.0, accepted=True) == 160.0
    assert channel.trusted_until(100.0, 10_000.0, accepted=False) == 100.0 + channel.REFUSED_REVIEW_TTL_SECONDS


@given(
    st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=10)
)
def test_backoff_grows_then_stays_bounded_and_honours_retry_after(failures: int, draw: float, floor: float) -> None:
    delay = subscriber.backoff(failures, lambda: draw, floor)
    ceiling = min(subscriber.MAX_BACKOFF, subscriber.BASE_BACKOFF * 2 ** (failures - 1))
    assert floor <= delay <= 1.5 * floor + ceiling
    assert subscriber.backoff(failures, lambda: 1.0) == ceiling  # the top of the jitter range


def test_backoff_spreads_a_crowd() -> None:
    """1,000 sidecars that failed together do not come back together: their next attempts spread."""
    rng = random.Random(7)  # noqa: S311 (jitter, not a secret)
    delays = sorted(subscriber.backoff(3, rng.random) for _ in range(1000))
    assert delays[0] < 0.1 and delays[-1] > 1.9  # uniform over [0, 2 s]
    assert max(b - a for a, b in itertools.pairwise(delays)) < 0.1
