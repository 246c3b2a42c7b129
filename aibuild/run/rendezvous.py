"""How torchrun's agents on several nodes find each other: the one rendezvous that
``aibuild run --nodes`` and every cluster export (``aibuild.export``) share, and the one
place the multi-node torchrun command line is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aibuild import bounds
from aibuild.contract import TRAIN_ENTRYPOINT
from aibuild.errors import ExportError

DEFAULT_RDZV_PORT = 29500
# torchrun prefixes every line of a worker with its global rank (with ``--tee 3``)
RANK_PREFIX_ENV = ("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "[rank${rank}]: ")


@dataclass(frozen=True)
class Rendezvous:
    """How torchrun's agents on ``nnodes`` nodes meet.

    ``endpoint`` is ``HOST:PORT`` and may hold a variable the scheduler fills in
    (``$RDZV_HOST:$RDZV_PORT`` in a Slurm script). With ``node_rank`` None it is c10d
    rendezvous named ``run_id`` (the agent on HOST hosts the store, ranks are given out
    as agents join); with ``node_rank`` set it is static rendezvous, in which the node
    of rank 0 hosts the store at HOST and every node knows its rank (a Kubernetes
    Indexed Job's completion index). Workers' lines are prefixed with their global rank
    (``--tee 3`` and ``RANK_PREFIX_ENV`` in the environment).
    """

    nnodes: int
    nproc_per_node: int
    endpoint: str
    run_id: str = "none"
    node_rank: str | None = None
    local_addr: str | None = None  # what this node tells the others to reach it at

    @property
    def backend(self) -> str:
        return "c10d" if self.node_rank is None else "static"

    def torchrun(self, trainer_args: Sequence[str] = ()) -> list[str]:
        """The whole command: torchrun with this rendezvous, then ``aibuild train ARGS``."""
        argv = [
            "torchrun",
            "--nnodes",
            str(self.nnodes),
            "--nproc-per-node",
            str(self.nproc_per_node),
            "--tee",
            "3",
            "--rdzv-backend",
            self.backend,
            "--rdzv-endpoint",
            self.endpoint,
        ]
        if self.node_rank is None:
            argv += ["--rdzv-id", self.run_id]
        else:
            argv += ["--node-rank", self.node_rank]
        if self.local_addr is not None:
            argv += ["--local-addr", self.local_addr]
        return [*argv, "-m", *TRAIN_ENTRYPOINT, *trainer_args]


def check_nodes(nodes: int, bound: str = "job_nodes") -> int:
    """``nodes`` within its bound (``job_nodes`` for a cluster, ``run_nodes`` on one host)."""
    return bounds.check(bound, nodes, "--nodes", ExportError)
