"""Revocation as workloads see it: an account is disabled while a Pod keeps calling the ledger with a
copy of its token (as a leaked or cached token would be used), and the time until the ledger's
sidecar refuses it is measured, kubelet's refresh of the mounted trust bundle included (its default
sync period: the figure is what users get, not tuned)."""

from __future__ import annotations

import functools
import json
from typing import Any

from tests import waiting
from tests.e2e import kit

SAMPLES = 5
SETTLED = 20  # consecutive refused calls (5 s): both ledger replicas refuse


def refused_for_good(calls: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first call of the final run of refusals, once that run is long enough to be final."""
    last_ok = max((i for i, c in enumerate(calls) if c["status"] == 200), default=-1)
    tail = calls[last_ok + 1 :]
    if len(tail) < SETTLED:
        return None
    assert all(c["status"] == 401 and c["reason"] == "revoked" for c in tail), tail[:3]
    return tail[0]


def refused_after(caller: kit.Caller, disabled: float) -> dict[str, Any] | None:
    return refused_for_good(caller.calls(disabled))


def test_disable_refuses_the_accounts_token_in_the_pod(
    examples: kit.Release, steady: kit.Caller, report: dict[str, Any]
) -> None:
    kube = examples.kube
    names = [f"caller-{i}" for i in range(1, SAMPLES + 1)]
    accounts = [kit.account(n, token={"audiences": ["ledger"]}) for n in names]
    kit.apply_json(kube, *accounts, kit.binding("callers-write-ledger", "ledger-writer", names))
    callers = [kit.start_caller(examples, n, n, interval=0.25, hold=True) for n in names]
    began = kit.now()
    first, settled = [], []
    for caller in callers:  # one after the other, so each meets kubelet's sync at another moment
        disabled = kit.now()
        kube.kubectl("patch", "serviceaccounts.iam.tessera.dev", caller.account, "-n", "shop", "--type=merge",
                     "-p", json.dumps({"spec": {"disabled": True}}))  # fmt: skip
        final = waiting.until(
            functools.partial(refused_after, caller, disabled), timeout=240, interval=1, what=f"{caller.name} refused"
        )
        earliest = next(c for c in caller.calls(disabled) if c["status"] == 401)
        first.append(earliest["t"] - disabled)
        settled.append(final["t"] - disabled)
    report["disable -> held token refused in the pod, first refusal (s)"] = kit.summary(first)
    report["disable -> held token refused in the pod, by every replica (s)"] = kit.summary(settled)
    assert [
        c for c in steady.calls(max(began, steady.serving_since)) if c["status"] != 200
    ] == []  # the other accounts kept working
