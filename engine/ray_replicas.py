"""The `ray-replicas` backend: a role's model served inside the Ray cluster by N replica actors.

For a cluster that has GPUs but no vLLM servers: each replica is a Ray actor holding one
in-process engine (`options.backend`: `vllm` by default, or `transformers`), placed by Ray on
a node with the GPUs it asks for (`tensor_parallel_size` of them for vLLM). Requests from
every record in flight go to the replica with the fewest outstanding (the same
`pool.EndpointPool` as HTTP pools, so a dead replica is taken out and probed again), and each
replica micro-batches what reaches it, as the in-process engines do.

    [roles.answerer]
    engine = "ray-replicas"
    model = "cyberagent/calm3-22b-chat"
    options = {backend = "vllm", replicas = 4, tensor_parallel_size = 2}

Replicas are named per Ray job and config, so with the Ray executor the record workers share
the replicas the driver started (the driver owns them: they live exactly as long as the run).
Where the cluster has fewer GPUs than the replicas need, the role fails at once and says so.
Why not `ray.data.llm`'s batch processor: it maps a dataset through a model in one pass,
while a generator's records talk to a model turn by turn (a follow-up depends on the
answer), so replicas must answer single requests as they come.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from typing import Any

from synthgen.engine import backends
from synthgen.engine.backends import Backend
from synthgen.engine.errors import EngineUnavailable, RequestError
from synthgen.engine.messages import ChatResult, Message
from synthgen.engine.pool import EndpointPool
from synthgen.spec import RoleConfig

NAMESPACE = "synthgen"
OWN_OPTIONS = ("backend", "replicas", "num_gpus", "num_cpus")


class Replica:
    """One engine inside a Ray actor."""

    def __init__(self, cfg: RoleConfig) -> None:
        self.client = backends.get(cfg.engine or "vllm").make(cfg)

    def model(self) -> str:
        return self.client.model

    async def complete(self, messages: list[Message], sampling: dict[str, Any], timeout: float) -> ChatResult:
        return await self.client.complete(messages, sampling, timeout)

    async def aclose(self) -> None:
        await self.client.aclose()


def _plan(cfg: RoleConfig) -> tuple[RoleConfig, int, float, float]:
    opts = cfg.options
    inner = str(opts.get("backend", "vllm"))
    if inner == "ray-replicas" or inner not in backends.names() or not backends.get(inner).in_process:
        raise ValueError(f"ray-replicas: options.backend must be an in-process engine (vllm, transformers), "
                         f"not {inner!r}")
    replicas = int(opts.get("replicas", 1))
    if not 1 <= replicas <= 1024:
        raise ValueError("ray-replicas: options.replicas must be 1..1024")
    gpus = float(opts.get("num_gpus", int(opts.get("tensor_parallel_size", 1)) if inner == "vllm" else 0))
    cpus = float(opts.get("num_cpus", 1))
    inner_cfg = cfg.model_copy(update={"engine": inner,
                                       "options": {k: v for k, v in opts.items() if k not in OWN_OPTIONS}})
    return inner_cfg, replicas, gpus, cpus


def _connect() -> None:
    import ray

    if not ray.is_initialized():
        from synthgen.settings import get_settings

        ray.init(address=get_settings().ray_address or os.environ.get("RAY_ADDRESS"), include_dashboard=False,
                 log_to_driver=False)


class ReplicasClient:
    def __init__(self, cfg: RoleConfig) -> None:
        import ray

        inner, count, gpus, cpus = _plan(cfg)
        _connect()
        have = float(ray.cluster_resources().get("GPU", 0))
        if gpus * count > have:
            raise EngineUnavailable(
                f"ray-replicas: {count} replica(s) x {gpus:g} GPU need {gpus * count:g} GPUs, and this Ray cluster "
                f"has {have:g}. Add GPU nodes, lower options.replicas, or serve the model on CPU with "
                "options.backend = 'transformers' and options.num_gpus = 0.")
        digest = hashlib.sha256(repr(sorted(cfg.model_dump(exclude={"api_key"}).items())).encode()).hexdigest()[:12]
        base = f"synthgen-{ray.get_runtime_context().get_job_id()}-{digest}"
        actor_cls = ray.remote(Replica)
        placement = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": -1, "max_task_retries": 0,
                     "max_concurrency": 100_000, "namespace": NAMESPACE}
        self.pool = EndpointPool([f"{base}-{i}" for i in range(count)])
        self.owned = []
        for ep in self.pool.endpoints:
            try:
                ep.client = ray.get_actor(ep.url, namespace=NAMESPACE)  # started by this run's driver
            except ValueError:
                ep.client = actor_cls.options(name=ep.url, get_if_exists=True, **placement).remote(inner)
                self.owned.append(ep.client)
        self.model = cfg.model or inner.model or "ray-replicas"

    async def complete(self, messages: list[Message], sampling: dict[str, Any], timeout: float) -> ChatResult:
        from ray.exceptions import RayActorError, RayTaskError

        pool = self.pool
        ep = pool.choose()
        try:
            result = await ep.client.complete.remote(messages, sampling, timeout)
        except RayTaskError as exc:  # the replica's engine raised
            cause = exc.cause
            if isinstance(cause, RequestError):
                pool.release(ep, False, cause.reason)
                raise RequestError(cause.reason, str(cause), retryable=cause.retryable,
                                   retry_after=cause.retry_after) from None
            pool.release(ep, False, "bad_response")
            raise RequestError("replica_error", f"{type(cause).__name__}: {cause}"[:500], retryable=True) from None
        except RayActorError as exc:  # the replica's process or node is gone (it restarts)
            pool.release(ep, False, "connection")
            raise RequestError("connection", f"replica {ep.index} lost: {type(exc).__name__}", retryable=True) from None
        except BaseException:
            pool.release(ep, None)
            raise
        pool.release(ep, True)
        return result

    async def aclose(self) -> None:
        import ray

        for actor in self.owned:
            with contextlib.suppress(Exception):  # it is going away either way
                await actor.aclose.remote()
            ray.kill(actor, no_restart=True)
        self.owned = []


def check(role: str, cfg: RoleConfig) -> None:
    if not cfg.model:
        raise ValueError(f"role {role!r}: the ray-replicas engine needs a model (Hub id or a path the nodes can read)")
    _plan(cfg)


backend = Backend(name="ray-replicas", make=ReplicasClient, check=check, in_process=True, own_timeout=False,
                  description="the model inside the Ray cluster: N replica actors of an in-process engine "
                              "(vllm on GPUs, or transformers), least-outstanding routing")
