"""What the issuer keeps in memory, each fed by an informer (list + watch): the issuer key set, the
revocations, Tessera ServiceAccounts, ServiceAccountKeys and IdentityProviders.

These answer lookups (which key has this kid, which account names this Kubernetes ServiceAccount,
which provider has this issuer). Whether a principal may receive a token is then decided on a
consistent read of that principal (see :mod:`tessera.kube.issuing`), so a watch's delay can never
let a token out after a revocation was stored.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pydantic

from tessera import errors
from tessera.api import identityprovider as idp_api
from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.api import serviceaccountkey as sak_api
from tessera.core import issuer, manifests, revocations, settings
from tessera.kube import client, informer, issuerkeys

log = logging.getLogger("tessera.issuer")


def _keyset(obj: dict[str, Any]) -> issuer.KeySet | None:
    stored = issuerkeys.parse(obj)
    if stored.keyset is None:
        log.error("The issuer key Secret is unusable: %s", stored.problem)
    return stored.keyset


def _revocations(obj: dict[str, Any]) -> revocations.Revocations | None:
    text = (obj.get("data") or {}).get(manifests.REVOCATIONS_KEY)
    try:
        return revocations.loads(text) if text else {}
    except errors.ConfigError as exc:
        log.error("The stored revocations are unusable: %s", exc)
        return None


def _model(kind: type[meta.Resource]) -> Any:
    def parse(obj: dict[str, Any]) -> meta.Resource | None:
        try:
            return kind.parse(obj)
        except pydantic.ValidationError:
            return None

    return parse


class Caches:
    def __init__(self, kube: client.Clients, cfg: settings.Settings) -> None:
        custom, core, ns = kube.custom, kube.core, cfg.namespace
        group = (meta.GROUP, meta.VERSION)
        self.keys: informer.Informer[issuer.KeySet] = informer.Informer(
            kube.api, "issuer keys", core.list_namespaced_secret, _keyset,
            namespace=ns, field_selector=f"metadata.name={settings.ISSUER_KEYS_SECRET}",
        )  # fmt: skip
        self.revoked: informer.Informer[revocations.Revocations] = informer.Informer(
            kube.api, "revocations", core.list_namespaced_config_map, _revocations,
            namespace=ns, field_selector=f"metadata.name={settings.REVOCATIONS_CONFIGMAP}",
        )  # fmt: skip
        self.accounts: informer.Informer[sa_api.ServiceAccount] = informer.Informer(
            kube.api, "serviceaccounts", custom.list_cluster_custom_object, _model(sa_api.ServiceAccount),
            group=group[0], version=group[1], plural=sa_api.INFO.plural,
        )  # fmt: skip
        self.account_keys: informer.Informer[sak_api.ServiceAccountKey] = informer.Informer(
            kube.api, "serviceaccountkeys", custom.list_cluster_custom_object, _model(sak_api.ServiceAccountKey),
            group=group[0], version=group[1], plural=sak_api.INFO.plural,
        )  # fmt: skip
        self.providers: informer.Informer[idp_api.IdentityProvider] = informer.Informer(
            kube.api, "identityproviders", custom.list_cluster_custom_object, _model(idp_api.IdentityProvider),
            group=group[0], version=group[1], plural=idp_api.INFO.plural,
        )  # fmt: skip
        self._namespace = ns

    @property
    def all(self) -> tuple[informer.Informer[Any], ...]:
        return (self.keys, self.revoked, self.accounts, self.account_keys, self.providers)

    def start(self) -> None:
        for each in self.all:
            each.start()

    def stop(self) -> None:
        for each in self.all:
            each.stop()

    def synced(self) -> bool:
        return all(each.synced.is_set() for each in self.all) and self.keyset() != ()

    def keyset(self) -> issuer.KeySet:
        return self.keys.get(self._namespace, settings.ISSUER_KEYS_SECRET) or ()

    def not_before(self, subject: str) -> datetime.datetime | None:
        current = self.revoked.get(self._namespace, settings.REVOCATIONS_CONFIGMAP) or {}
        return revocations.not_before(current, subject)

    def provider_for(self, issuer_url: str) -> idp_api.IdentityProvider | None:
        """The provider with this exact issuer URL (two with one issuer: the first by name)."""
        matches = sorted(
            (p for p in self.providers.items.values() if p.spec.issuer == issuer_url), key=lambda p: p.name
        )
        return matches[0] if matches else None

    def accounts_acting_for(self, namespace: str, name: str) -> list[sa_api.ServiceAccount]:
        """Tessera ServiceAccounts of ``namespace`` that name the Kubernetes ServiceAccount ``name``."""
        found = [
            sa
            for (ns, _), sa in self.accounts.items.items()
            if ns == namespace and sa.spec.kubernetes_service_account is not None
            and sa.spec.kubernetes_service_account.name == name
        ]  # fmt: skip
        return sorted(found, key=lambda sa: sa.name)

    def key_named(self, namespace: str, kid: str) -> tuple[str, str] | None:
        """(namespace, name) of the ServiceAccountKey of ``namespace`` registered with ``kid``."""
        for (ns, name), key in self.account_keys.items.items():
            if ns == namespace and key.status.key_id == kid:
                return (ns, name)
        return None
