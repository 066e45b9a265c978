"""Issuer key rotation: publish before signing, retire only after every token it signed has expired."""

from __future__ import annotations

import datetime

import pytest

from tessera import errors
from tessera.core import issuer, settings

T0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
CFG = settings.Settings(
    key_rotation=datetime.timedelta(days=30),
    key_publish_lead=datetime.timedelta(minutes=5),
    max_token_ttl=datetime.timedelta(hours=24),
)


def test_nothing_is_due_before_the_period() -> None:
    keyset = issuer.initial("ES256", T0)
    plan = issuer.rotation(keyset, CFG, T0 + datetime.timedelta(days=29))
    assert not plan.changes
    assert issuer.next_rotation_event(keyset, CFG) == T0 + datetime.timedelta(days=30)


def test_a_new_key_is_published_before_it_signs() -> None:
    keyset = issuer.initial("ES256", T0)
    now = T0 + datetime.timedelta(days=30)
    plan = issuer.rotation(keyset, CFG, now)
    assert plan.add and not plan.retire
    rotated = issuer.rotated(keyset, plan, CFG, now)
    old, new = keyset[0], rotated[-1]
    assert {k["kid"] for k in issuer.jwks(rotated)["keys"]} == {old.kid, new.kid}  # published at once
    assert issuer.signing_key(rotated, now).kid == old.kid  # but not signing yet
    assert issuer.signing_key(rotated, now + CFG.key_publish_lead).kid == new.kid
    assert not issuer.rotation(rotated, CFG, now + datetime.timedelta(minutes=1)).add  # one pending key at a time


def test_the_old_key_stays_until_every_token_it_signed_has_expired() -> None:
    keyset = issuer.initial("ES256", T0)
    now = T0 + datetime.timedelta(days=30)
    rotated = issuer.rotated(keyset, issuer.rotation(keyset, CFG, now), CFG, now)
    takeover = now + CFG.key_publish_lead
    last_expiry = takeover + CFG.max_token_ttl  # the last token the old key signed expires by then
    assert not issuer.rotation(rotated, CFG, last_expiry).retire
    retire_at = issuer.next_rotation_event(rotated, CFG)
    assert retire_at == last_expiry + CFG.clock_leeway
    plan = issuer.rotation(rotated, CFG, retire_at)
    assert plan.retire == {keyset[0].kid} and not plan.add
    assert [k.kid for k in issuer.rotated(rotated, plan, CFG, retire_at)] == [rotated[-1].kid]


def test_zero_period_disables_rotation() -> None:
    cfg = settings.Settings(key_rotation=datetime.timedelta(0))
    keyset = issuer.initial("ES256", T0)
    assert not issuer.rotation(keyset, cfg, T0 + datetime.timedelta(days=3650)).changes
    assert issuer.next_rotation_event(keyset, cfg) is None


def test_settings_bound_the_maximum_token_lifetime() -> None:
    with pytest.raises(errors.ConfigError, match="MAX_TOKEN_TTL"):
        settings.Settings.from_env({"TESSERA_MAX_TOKEN_TTL_SECONDS": "10"})
    cfg = settings.Settings.from_env({"TESSERA_KEY_PUBLISH_LEAD_SECONDS": "7", "TESSERA_KEY_ROTATION_HOURS": "0.01"})
    assert cfg.key_publish_lead == datetime.timedelta(seconds=7) and cfg.key_rotation == datetime.timedelta(seconds=36)


def test_unset_variables_leave_every_setting_at_its_one_default() -> None:
    assert settings.Settings.from_env({}) == settings.Settings()
    assert settings.Settings.from_env({"TESSERA_NAMESPACE": "ops"}) == settings.Settings(
        namespace="ops", issuer="https://tessera.ops.svc"
    )
