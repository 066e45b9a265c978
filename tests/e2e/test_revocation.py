"""Revocation as workloads see it: an account is disabled while a Pod keeps calling the ledger with a
copy of its token (as a leaked or cached token would be used), and the time until the ledger's
sidecars refuse it is measured. With the live bundle channel (examples/40 subscribes its sidecars to
the issuer) the revocation arrives within about a second; with the channel cut (the issuer scaled to
zero), it arrives through the mounted bundle at kubelet's next refresh, and nothing else fails."""

from __future__ import annotations

import functools
from typing import Any

from tests import waiting
from tests.e2e import kit

LIVE_SAMPLES = 20
CUT_SAMPLES = 3
INTERVAL = 0.2  # seconds between a caller's calls: the resolution of the measurement
SETTLED = 20  # consecutive refused calls (4 s): both ledger replicas refuse


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


def disable_and_measure(kube: Any, callers: list[kit.Caller], timeout: float) -> tuple[list[float], list[float]]:
    """Disable each caller's account in turn; seconds until its first refused call, and until every
    ledger replica refuses it."""
    first, settled = [], []
    for caller in callers:  # one after the other, so each meets kubelet's sync at another moment
        disabled = kit.now()
        kube.custom.patch_namespaced_custom_object(
            "iam.tessera.dev", "v1alpha1", "shop", "serviceaccounts", caller.account, {"spec": {"disabled": True}}
        )
        final = waiting.until(
            functools.partial(refused_after, caller, disabled), timeout=timeout, interval=0.5,
            what=f"{caller.name} refused",
        )  # fmt: skip
        earliest = next(c for c in caller.calls(disabled) if c["status"] == 401)
        first.append(earliest["t"] - disabled)
        settled.append(final["t"] - disabled)
    return first, settled


def test_disable_refuses_the_accounts_token_in_the_pod(
    examples: kit.Release, steady: kit.Caller, report: dict[str, Any]
) -> None:
    kube = examples.kube
    live = [f"caller-{i}" for i in range(1, LIVE_SAMPLES + 1)]
    cut = [f"cut-{i}" for i in range(1, CUT_SAMPLES + 1)]
    accounts = [kit.account(n, token={"audiences": ["ledger"]}) for n in live + cut]
    kit.apply_json(kube, *accounts, kit.binding("callers-write-ledger", "ledger-writer", live + cut))
    began = kit.now()
    callers = kit.start_callers(examples, live + cut, interval=INTERVAL, hold=True)
    report["new account and grant applied -> allowed by every ledger replica, live channel (s)"] = kit.summary(
        [c.serving_since - began for c in callers]
    )
    assert kit.channel_states(kube) == {"up"}

    first, settled = disable_and_measure(kube, callers[:LIVE_SAMPLES], timeout=60)
    report["disable -> held token refused in the pod, live channel, first refusal (s)"] = kit.summary(first)
    report["disable -> held token refused in the pod, live channel, by every replica (s)"] = kit.summary(settled)
    kube.kubectl("delete", "pod", "-n", "shop", "--wait=false", *live)  # their refused calls are load now

    # The channel cut: no issuer at all. The sidecars say so, and keep working from their mounts.
    issuer = f"deployment/{kit.RELEASE}-issuer"
    kube.kubectl("scale", issuer, "-n", kit.HOME, "--replicas=0")
    try:
        waiting.until(lambda: kit.channel_states(kube) == {"failing"}, timeout=120, what="the channel failing")
        first, settled = disable_and_measure(kube, callers[LIVE_SAMPLES:], timeout=240)
        report["disable -> held token refused in the pod, channel cut, first refusal (s)"] = kit.summary(first)
        report["disable -> held token refused in the pod, channel cut, by every replica (s)"] = kit.summary(settled)
        ready = [kit.sidecar_readiness(kube, pod) for pod in kit.ledger_pods(kube)]
        assert all(r["ready"] and r["bundle"]["source"] == "mount" for r in ready), ready
    finally:
        kube.kubectl("scale", issuer, "-n", kit.HOME, "--replicas=2")
        kit.wait_rollout(kube, kit.HOME, f"{kit.RELEASE}-issuer")
    waiting.until(lambda: kit.channel_states(kube) == {"up"}, timeout=120, what="the channel up again")
    # The other accounts kept working, with the channel and without it.
    assert kit.refused_since(report, "revocation", steady, began) == []
    kube.kubectl("delete", "pod", "-n", "shop", "--wait=false", *cut)
    restarts = "jsonpath={.status.containerStatuses[*].restartCount}"
    counts = [kube.kubectl("get", "pod", p, "-n", "shop", "-o", restarts).stdout for p in kit.ledger_pods(kube)]
    assert all(set(c.split()) <= {"0"} for c in counts), counts  # no sidecar failed for want of the issuer
