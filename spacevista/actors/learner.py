"""Learner ranks as Ray actors in one placement group, forming one torch.distributed group.

Each `LearnerWorker` holds a `LearnerCore` (learner/core.py: FSDP2 over the policy, experts and
router, verl objectives). The `LearnerGroup` on the controller side fans a batch out in equal shares,
and turns rank 0's gathered adapters into object-store refs that rollout workers pull.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import ray
import torch

from spacevista.cluster import run_storage
from spacevista.actors.pool import actor_options, split_even
from spacevista.actors.recovery import all_alive, wait
from spacevista.actors.workers import init_actor_process
from spacevista.cluster.plan import resolve_shard_base
from spacevista.cluster.resources import RoleGroup
from spacevista.configs.schema import TrainConfig
from spacevista.learner.batch import collate
from spacevista.rollout.snapshot import PolicySnapshot
from spacevista.tracking import console
from ray.util.placement_group import remove_placement_group


def resolve_prompts(samples: list) -> list:
    """Samples with their prompt refs fetched, each distinct ref once (a GRPO group shares one)."""
    refs = list(dict.fromkeys(s.prompt for s in samples if isinstance(s.prompt, ray.ObjectRef)))
    values = dict(zip(refs, ray.get(refs))) if refs else {}
    return [dataclasses.replace(s, prompt=values[s.prompt]) if isinstance(s.prompt, ray.ObjectRef) else s
            for s in samples]


def listening_socket(address: str) -> socket.socket:
    """A TCP socket listening on `address` only (a free port): the rendezvous store's, so that a
    local run's store is reachable from this machine alone (torch's own store binds every interface)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    sock.listen(128)
    return sock


def rendezvous_store(address: str, port: int, rank: int, world_size: int, listener: socket.socket | None = None,
                     timeout_s: float = 300.0):
    """torch.distributed's TCPStore: rank 0 serves it on `listener` (bound to `address`), the others connect.
    The store takes the listening socket over (it closes the descriptor when it goes): Python lets go of it
    here, so the same descriptor number is never closed twice (a later close would hit whatever reused it)."""
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0:
        return dist.TCPStore(address, port, world_size, True, timeout, master_listen_fd=listener.detach())
    return dist.TCPStore(address, port, world_size, False, timeout)


@ray.remote
class LearnerWorker:
    """One learner rank."""

    def __init__(self, rank: int, world_size: int, cfg: TrainConfig, model_path: str):
        init_actor_process()
        self.rank, self.world_size, self.cfg, self.model_path = rank, world_size, cfg, model_path
        self.core = None
        self._listener: socket.socket | None = None  # rank 0: the rendezvous store's listening socket

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address for the process group (called on rank 0 only): this node's Ray address
        (127.0.0.1 for a local run) and a port listening on that address alone."""
        self._listener = listening_socket(ray.util.get_node_ip_address())
        return self._listener.getsockname()[:2]

    def setup(self, master_addr: str, master_port: int, shard_base: bool = True) -> int:
        import torch.distributed as dist

        from spacevista.learner.core import LearnerCore

        backend = self.cfg.cluster.backend
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() and self.cfg.cluster.learner.num_gpus > 0 else "gloo"
        store = rendezvous_store(master_addr, master_port, self.rank, self.world_size, self._listener)
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size)
        cfg = self.cfg
        device = "cuda" if backend == "nccl" else "cpu"
        horizon = cfg.learner.optim.total_steps or cfg.steps  # the cosine schedule's horizon
        self.core = LearnerCore(
            self.model_path, cfg.model.experts, lora=cfg.model.lora, objective=cfg.learner.objective,
            optim=dataclasses.replace(cfg.learner.optim, total_steps=horizon), router=cfg.learner.router,
            micro_batch_size=cfg.learner.micro_batch_size, fsdp=cfg.learner.fsdp, device=device,
            share_prompts=cfg.learner.share_prompts, gradient_checkpointing=cfg.learner.gradient_checkpointing,
            max_tokens_per_micro_batch=cfg.learner.max_tokens_per_micro_batch,
            attn_implementation=cfg.model.attn_implementation, mixed_precision=cfg.learner.mixed_precision,
            sft_full_params=cfg.learner.sft.full_params, temperature=cfg.rollout.temperature, seed=cfg.seed,
            dense=cfg.model.dense, max_nonfinite_steps=cfg.learner.max_nonfinite_steps, shard_base=shard_base)
        return self.rank

    def sft_step(self, samples: list, targets: list[str]) -> dict[str, float]:
        return self.core.sft_step(samples, targets)

    def rl_step(self, samples: list) -> tuple[dict[str, float], PolicySnapshot | None]:
        """One update; rank 0 also returns the policy snapshot's change: the parts the global batch moved, under
        the new version. The samples' prompts arrive as object-store refs (one per request, fetched here once)."""
        metrics = self.core.rl_step(collate(self.core.processor, resolve_prompts(samples)))
        return metrics, self._publish(self.core.stepped_experts, dense=self.core.stepped_dense)

    def snapshot(self) -> PolicySnapshot | None:
        """The whole served policy under the learner's current version (rank 0; None elsewhere). Collective."""
        return self._publish(None, dense=True)

    def _publish(self, experts: list[str] | None, dense: bool = False) -> PolicySnapshot | None:
        """A snapshot of `experts` (None: all; a collective) and the dense fusion when `dense`, at `core.step`."""
        weights = self.core.expert_state_dicts(experts) if experts is None or experts else {}
        fusion = self.core.dense_state_dict() if dense and self.core.dense is not None else None  # replicated
        if self.rank != 0:
            return None
        version = self.core.step
        return PolicySnapshot(version, {e: (version, ray.put(sd)) for e, sd in weights.items()},
                              (version, ray.put(fusion)) if fusion is not None else None)

    def export_policy(self, path: str) -> str | None:
        """Write the SFT-trained base as a Hugging Face directory (collective; rank 0 writes); None if untrained."""
        if not self.core.base_trained:
            return None
        self.core.export_policy(path)
        return path

    def save(self, directory: str) -> None:
        self.core.save_checkpoint(directory)

    def load(self, directory: str) -> None:
        self.core.load_checkpoint(directory)

    def ping(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


PENDING_ROLLOUT = "pending_rollout.json"  # async mode: step N+1's completions, generated before update N
OLD_PENDING_ROLLOUT = "pending_rollout.pkl"  # checkpoints before 2026-11-30 pickled it: never unpickled


class LearnerGroup:
    """The learner ranks; every call goes to all ranks at once (their collectives must match)."""

    def __init__(self, cfg: TrainConfig, model_path: Path, group: RoleGroup, run_name: str):
        self.cfg, self.group, self.model_path = cfg, group, Path(model_path)
        self.call_s, self.start_s = cfg.cluster.call_timeout_s, cfg.cluster.start_timeout_s
        world = group.config.count
        self.workers = [LearnerWorker.options(**actor_options(group, r, run_name))
                        .remote(r, world, cfg, str(model_path)) for r in range(world)]
        self.shard_base = resolve_shard_base(cfg, model_path)  # once, here: every rank must agree
        console.print(f"learner: {world} rank(s), the base {'sharded by FSDP2' if self.shard_base else 'replicated'}"
                      f" (learner.shard_base={'auto' if cfg.learner.shard_base is None else cfg.learner.shard_base})")
        try:
            addr, port = wait([self.workers[0].rendezvous.remote()], "learner", self.start_s)[0]
            wait([w.setup.remote(addr, port, self.shard_base) for w in self.workers], "learner", self.start_s,
                 self.workers)
        except BaseException:
            self.shutdown(graceful=False)
            raise

    def _all(self, method: str, *per_rank: list[Any], shared: tuple = (), timeout_s: float | None = None) -> list[Any]:
        """Call `method` on every rank; all answer within the deadline, or the group has failed (RoleFailure)."""
        refs = [getattr(w, method).remote(*[p[r] for p in per_rank], *shared) for r, w in enumerate(self.workers)]
        return wait(refs, "learner", timeout_s or self.call_s, self.workers)

    def sft_step(self, samples: list, targets: list[str]) -> dict[str, float]:
        n = len(self.workers)
        return _mean_metrics(self._all("sft_step", split_even(samples, n), split_even(targets, n),
                                       timeout_s=self.start_s))

    def rl_step(self, samples: list) -> tuple[dict[str, float], PolicySnapshot]:
        """(mean metrics, the snapshot's change: apply it with `PolicySnapshot.updated`)."""
        results = self._all("rl_step", split_even(samples, len(self.workers)))
        return _mean_metrics([m for m, _ in results]), results[0][1]

    def snapshot(self) -> PolicySnapshot:
        """The whole policy rollout workers must serve now, under the learner's version."""
        return self._all("snapshot")[0]

    def export_policy(self, path: Path) -> Path | None:
        """Where rollout workers load the policy from when the base was trained (SFT), else None."""
        written = self._all("export_policy", shared=(str(path),), timeout_s=self.start_s)[0]
        return Path(written) if written else None

    def save(self, run_dir: Path, step: int, controller: dict, keep: int, pending: dict | None = None) -> Path:
        """Every rank writes its part into one staging directory, the controller its state (and, in
        async mode, the next step's finished rollout as JSON); then the directory is committed atomically."""
        import json

        tmp = run_storage.staging_dir(run_dir, step)
        self._all("save", shared=(str(tmp),), timeout_s=self.start_s)  # a trained base is saved too: size-bound
        (tmp / "controller.json").write_text(json.dumps(controller))
        if pending is not None:
            (tmp / PENDING_ROLLOUT).write_text(json.dumps(pending))
        meta = {"world_size": len(self.workers), "model_path": str(self.model_path),
                "experts": list(self.cfg.model.experts)}  # the router's class order
        return run_storage.commit(tmp, step, meta, keep)

    def load(self, checkpoint: Path) -> tuple[dict[str, Any], dict | None]:
        """(controller state, the pending rollout's state or None) after every rank loaded its part."""
        import json

        self._all("load", shared=(str(checkpoint),), timeout_s=self.start_s)
        pending_file = checkpoint / PENDING_ROLLOUT
        if not pending_file.exists() and (checkpoint / OLD_PENDING_ROLLOUT).exists():
            console.print(f"[yellow]warning:[/] {checkpoint / OLD_PENDING_ROLLOUT} is a pickle from an older version "
                          f"and is not loaded: the next step's rollout is generated again, so this resumed run "
                          f"will not match an uninterrupted one bit for bit")
        pending = json.loads(pending_file.read_text()) if pending_file.exists() else None
        return json.loads((checkpoint / "controller.json").read_text()), pending

    def shutdown(self, graceful: bool = True) -> None:
        """Leave the process group (when every rank answers), then kill the ranks and free their placement group."""
        if graceful and all_alive(self.workers):
            try:
                ray.get([w.shutdown.remote() for w in self.workers], timeout=30)
            except Exception:  # noqa: BLE001 - a dead rank must not block the others' teardown
                pass
        for w in self.workers:
            ray.kill(w, no_restart=True)
        remove_placement_group(self.group.pg)


def _mean_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*per_rank) if per_rank else set()
    return {k: sum(m[k] for m in per_rank if k in m) / sum(1 for m in per_rank if k in m) for k in sorted(keys)}
