"""Fine-tuning on several processes with torch.distributed, started by torch's own launcher (torchrun).

The job's process (the parent) does everything around training as for one process (it mines the hard
negatives, evaluates and exports); only the fit runs in ``hp.processes`` processes:

    python -m torch.distributed.run --nnodes 1 --nproc-per-node P --standalone --max-restarts 0 \\
        -m services.trainer.finetune.distributed WORK/distributed/payload.pkl

The parent pickles what the processes need into the job's work folder (a file it writes just before, for
the processes it starts, and never copies elsewhere): how to build the task (a picklable function of the
model folder), the folder to build it from (the base model, or the checkpoint's model on resume), the
mined negatives, the hyperparameters and, with early stopping, how to score the validation split.

Each process (rank) joins the process group (gloo on the CPU; NCCL on CUDA, local rank i on cuda:i, one
GPU each), builds the same task from the payload, wraps its model in DistributedDataParallel and runs
the shared loop (``loop.fit`` with a ``Shard``) over the same batches, taking every world-th example of
each global batch. Rank 0 leads: its progress reaches the parent as JSON lines (``progress.jsonl``) that
the parent hands to the job's control; it writes the checkpoints into the job's work folder, so a
resumed job, on any number of processes, starts from them as one process would; at the end it saves
the trained weights and the TrainResult, which the parent loads.

The parent ends the processes as soon as the job is cancelled (``control.check``) and fails the job with
a process's error (its traceback, or torchrun's log) when one fails: torchrun then stops the others, so
nothing waits on a dead peer. Each process reads its stdin, a pipe from the parent, and exits when it
closes: a worker killed outright leaves no training behind.

Several machines (``hp.nodes``): the job's worker is node 0 and hosts the rendezvous (torchrun's static
one, on ``MultiNode.master_addr:master_port``); global rank 0, its first process, leads as above. It
stores the payload in the object store and announces it in the job's progress (``distributed``: nodes,
processes, the rendezvous, the payload's key and sha256, the job's attempt). Each other node runs
``recforge train-node`` (services.trainer.node): it takes a node rank, fetches the payload, makes its
paths its own (``localize``) and runs the same torchrun with its rank (``join``). A node that fails, or
never joins within JOIN_TIMEOUT_S, fails torchrun on node 0, and so the job."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel

from services.trainer.control import JobControl
from services.trainer.finetune.base import Task
from services.trainer.finetune.bi_encoder import BiEncoderTask
from services.trainer.finetune.loop import TrainResult, fit, seed_everything
from services.trainer.finetune.shard import Shard
from shared.config import Settings
from shared.files import sha256_file
from shared.storage import ObjectStore, object_store
from shared.training import Hyperparameters

log = logging.getLogger("recforge.trainer")

RUN_DIR = "distributed"  # under the job's work folder; replaced at each launch
PAYLOAD = "payload.pkl"
PROGRESS = "progress.jsonl"
RESULT = "result.json"
WEIGHTS = "weights.pt"
LOG = "torchrun.log"
POLL_S = 0.2  # how often the parent forwards progress and checks for cancellation
STOP_GRACE_S = 15.0  # after which torchrun, asked to stop, is killed
# A collective waits this long for its peers: rank 0 evaluates (early stopping) and writes checkpoints
# while the others wait. A process that dies is noticed by torchrun, not by this timeout.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
# The other nodes have this long to join node 0's rendezvous (torchrun's static one) before the run fails.
JOIN_TIMEOUT_S = 600
ERROR_TAIL = 2000  # characters of a failed process's traceback, or of torchrun's log, in the job's error

TaskFactory = Callable[[str], Task]  # model folder -> task: pickled, so a module-level function or a partial
Validate = Callable[[Task, torch.device, JobControl], float]  # the validation metric of a task's model


class DistributedTrainingFailed(RuntimeError):
    """A training process failed; the message starts with its error."""


@dataclass
class Payload:
    build: TaskFactory
    model_dir: str
    hp: Hyperparameters
    device_type: str  # "cpu" or "cuda"
    work: Path  # the job's work folder: checkpoints
    checkpoint_interval_s: float
    negatives: dict[str, list[str]] | None = None  # a bi-encoder's mined negatives, query -> pool
    validate: Validate | None = None  # with early stopping
    # multi-node: what the other nodes make model_dir from on their own machine (see localize)
    base_model: str | None = None  # the job's base model (a hub id, or a folder every node has)
    resumed: bool = False  # model_dir is the job's checkpoint's model


@dataclass(frozen=True)
class MultiNode:
    """A job on several machines, as node 0 (the job's worker) runs it: where its rendezvous listens,
    where the payload goes for the other nodes, and what they need to make it their own."""

    nodes: int
    master_addr: str  # an address of this machine the other nodes reach
    master_port: int
    job_id: uuid.UUID
    attempt: int  # the job's run: the other nodes' ranks are counted per run
    store: ObjectStore
    base_model: str
    resumed: bool = False


@dataclass(frozen=True)
class Rendezvous:
    """torchrun's static rendezvous: node 0 listens on master_addr:master_port, the others connect."""

    nodes: int
    node_rank: int
    master_addr: str
    master_port: int


def multi_node(
    settings: Settings, job_id: uuid.UUID, attempt: int, base_model: str, hp: Hyperparameters
) -> MultiNode | None:
    """How run ``attempt`` of a job reaches its other nodes (None for a job on one machine)."""
    if hp.nodes == 1:
        return None
    host = settings.rendezvous_host
    if _is_loopback(host):
        log.warning(
            "the rendezvous is on a loopback address (%s): only nodes on this machine can join; set "
            "RECFORGE_RDZV_HOST to an address the other machines reach",
            host,
            extra={"job_id": str(job_id)},
        )
    return MultiNode(
        nodes=hp.nodes,
        master_addr=host,
        master_port=settings.rdzv_port,
        job_id=job_id,
        attempt=attempt,
        store=object_store(settings),
        base_model=base_model,
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return host == "localhost"


def payload_key(job_id: uuid.UUID, sha256: str) -> str:
    return f"jobs/{job_id}/distributed/payload-{sha256[:16]}.pkl"


def fit_distributed(
    task: Task,
    build: TaskFactory,
    model_dir: str,
    hp: Hyperparameters,
    device: torch.device,
    control: JobControl,
    work: Path,
    *,
    checkpoint_interval_s: float,
    validate: Validate | None = None,
    multi_node: MultiNode | None = None,
) -> TrainResult:
    """``loop.fit`` on ``hp.processes`` processes (on each of ``hp.nodes`` machines, with ``multi_node``).
    ``task`` is the parent's, built by ``build(model_dir)``: its mined negatives go to the processes and
    its model gets the trained weights. Raises JobCancelled when the job is cancelled,
    DistributedTrainingFailed when a process (or another node) fails."""
    if hp.nodes > 1 and multi_node is None:
        raise ValueError(f"nodes={hp.nodes} needs a rendezvous for the other nodes: this run has none")
    if multi_node is not None and multi_node.nodes != hp.nodes:
        raise ValueError(f"the rendezvous is for {multi_node.nodes} nodes; the job asks for {hp.nodes}")
    processes = hp.processes
    check_devices(device.type, processes)
    run = work / RUN_DIR
    payload = Payload(
        build=build,
        model_dir=model_dir,
        hp=hp,
        device_type=device.type,
        work=work,
        checkpoint_interval_s=checkpoint_interval_s,
        negatives=task.negatives if isinstance(task, BiEncoderTask) and task.negatives else None,
        validate=validate,
        base_model=multi_node.base_model if multi_node else None,
        resumed=multi_node.resumed if multi_node else False,
    )
    _write_payload(run, payload)
    if device.type == "cuda":
        task.model.to("cpu")  # rank 0 trains on the GPU the parent mined on
        torch.cuda.empty_cache()
    rendezvous = None
    stored: str | None = None
    if multi_node is not None:
        rendezvous = Rendezvous(multi_node.nodes, 0, multi_node.master_addr, multi_node.master_port)
        stored = _announce(run / PAYLOAD, multi_node, processes, control)
    try:
        command = torchrun_command(run / PAYLOAD, processes, rendezvous)
        _launch(run, command, processes, processes * hp.nodes, control)
    finally:
        if multi_node is not None and stored is not None:
            control.report(distributed=None)  # the run is over: no node joins it now
            with contextlib.suppress(Exception):  # the job's prefix goes when it ends in any case
                multi_node.store.delete(stored)
    fields = json.loads((run / RESULT).read_text())
    task.model.load_state_dict(torch.load(run / WEIGHTS, map_location="cpu", weights_only=True))
    task.model.to(device).eval()
    shutil.rmtree(run, ignore_errors=True)  # a failed run's files stay, for its log and errors
    return TrainResult(**fields)


def check_devices(device_type: str, processes: int) -> None:
    if device_type == "cuda" and torch.cuda.device_count() < processes:
        raise ValueError(
            f"processes={processes} on CUDA takes one GPU per process; this machine has "
            f"{torch.cuda.device_count()}"
        )


def _announce(payload: Path, multi_node: MultiNode, processes: int, control: JobControl) -> str:
    """Store the payload for the other nodes and name it, with the rendezvous, in the job's progress
    (the worker's heartbeat writes it to the job's row, where ``recforge train-node`` looks)."""
    sha256 = sha256_file(payload)
    key = payload_key(multi_node.job_id, sha256)
    multi_node.store.put(payload, key, cache=False)
    control.report(
        distributed={
            "nodes": multi_node.nodes,
            "processes": processes,
            "master_addr": multi_node.master_addr,
            "master_port": multi_node.master_port,
            "payload": {"key": key, "sha256": sha256},
            "attempt": multi_node.attempt,
        }
    )
    return key


def join(payload: Payload, run: Path, rendezvous: Rendezvous) -> None:
    """Run node ``rendezvous.node_rank``'s processes of a multi-node fit, ``payload`` made this machine's
    (see services.trainer.node): until the run ends. Raises DistributedTrainingFailed if it fails."""
    if rendezvous.node_rank < 1:
        raise ValueError("node 0 is the job's worker (fit_distributed); other nodes join with ranks from 1")
    check_devices(payload.device_type, payload.hp.processes)
    _write_payload(run, payload)
    processes = payload.hp.processes
    command = torchrun_command(run / PAYLOAD, processes, rendezvous)
    _launch(run, command, processes, processes * rendezvous.nodes, JobControl())


def _write_payload(run: Path, payload: Payload) -> None:
    """A fresh run folder holding ``payload``, for the processes torchrun starts here."""
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    with (run / PAYLOAD).open("wb") as handle:
        pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)


def torchrun_command(payload: Path, processes: int, rendezvous: Rendezvous | None = None) -> list[str]:
    """torch's launcher: on one machine a free rendezvous port of its own (--standalone); on several,
    node 0's static rendezvous. No restarts (a failed process fails the job, which the worker retries
    from the checkpoint)."""
    if rendezvous is None:
        where = ["--nnodes", "1", "--standalone"]
    else:
        where = [
            *("--nnodes", str(rendezvous.nodes), "--node-rank", str(rendezvous.node_rank)),
            *("--master-addr", rendezvous.master_addr, "--master-port", str(rendezvous.master_port)),
            *("--rdzv-conf", f"timeout={JOIN_TIMEOUT_S}"),
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *where,
        "--nproc-per-node",
        str(processes),
        "--max-restarts",
        "0",
        "-m",
        __name__,
        str(payload),
    ]


def _launch(run: Path, command: list[str], processes: int, world: int, control: JobControl) -> None:
    """Run torchrun (``processes`` of the ``world`` here) until it exits; forward rank 0's progress."""
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads(processes))}
    with (run / LOG).open("wb") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # the worker's own signals (a Ctrl-C) reach it, not torchrun: it stops us
        )
    progress = _Progress(run / PROGRESS)
    try:
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                progress.forward(control)
                control.check()
        progress.forward(control)
    except BaseException:
        _stop(proc)
        raise
    finally:
        _close(proc.stdin)
    if code != 0:
        raise DistributedTrainingFailed(_failure(run, code, world))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the processes now: each exits when its stdin closes, and torchrun stops them on SIGTERM."""
    _close(proc.stdin)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):  # the pipe's readers are gone already
            stream.close()


def _failure(run: Path, code: int, world: int) -> str:
    """The first failed process's error (the earliest traceback written), else the tail of torchrun's
    log (a process killed by a signal writes none)."""
    errors = sorted(run.glob("error-*.txt"), key=lambda p: p.stat().st_mtime)
    if errors:
        rank = errors[0].stem.removeprefix("error-")
        text = errors[0].read_text(errors="replace").strip()
        last = text.splitlines()[-1] if text else "no message"
        return f"training process {rank} of {world} failed: {last}\n{text[-ERROR_TAIL:]}"
    log = (run / LOG).read_text(errors="replace").strip()
    return f"torchrun exited with {code}:\n{log[-ERROR_TAIL:]}"


def _threads(processes: int) -> int:
    """CPU threads per process: the cores shared out, so the processes do not oversubscribe them."""
    return max(1, (os.cpu_count() or 1) // processes)


class _Progress:
    """Rank 0's progress file, read on from where the last read stopped; only whole lines count."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def forward(self, control: JobControl) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                control.report(**json.loads(line))


class _Reporter(JobControl):
    """Rank 0's control: each report is a line of JSON that the parent hands to the job's control. It is
    never asked to stop: the parent ends the processes instead."""

    def __init__(self, path: Path):
        super().__init__()
        self._file = path.open("a", encoding="utf-8")

    def report(self, **fields: Any) -> None:
        self._file.write(json.dumps(fields) + "\n")
        self._file.flush()


def _exit_with_parent(rank: int) -> None:
    """Exit as soon as stdin (the parent's pipe) closes: the job was cancelled or its worker is gone."""

    def watch() -> None:
        # the bare descriptor: a read blocked in sys.stdin's buffer would hold its lock at shutdown
        while os.read(0, 4096):
            pass
        print(f"training process {rank}: the parent closed its pipe; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _train(payload: Payload, run: Path) -> None:
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = payload.device_type == "cuda"
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(_threads(int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group(
        "nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT, device_id=device if cuda else None
    )
    try:
        seed_everything(payload.hp.seed)  # as the parent did: a new head starts alike on every process
        task = payload.build(payload.model_dir)
        if payload.negatives is not None and isinstance(task, BiEncoderTask):
            task.use_negatives(payload.negatives)
        task.model.to(device)
        ddp = DistributedDataParallel(
            task.model,
            device_ids=[local_rank] if cuda else None,
            forward_sync_buffers=False,  # BERT's buffers are constants
            # mean pooling leaves BERT's pooler out of a bi-encoder's loss (DDP's warning that it found no
            # unused parameter comes from the two forward passes of a step, and is wrong)
            find_unused_parameters=isinstance(task, BiEncoderTask),
        )
        shard = Shard(ddp, device)
        control = _Reporter(run / PROGRESS) if shard.leader else JobControl()
        evaluate = None
        if payload.validate is not None:
            own = functools.partial(payload.validate, task, device, control) if shard.leader else None
            evaluate = shard.scored_by_leader(own)
        result = fit(
            task,
            payload.hp,
            device,
            control,
            payload.work,
            checkpoint_interval_s=payload.checkpoint_interval_s,
            evaluate=evaluate,
            shard=shard,
        )
        if shard.leader:  # read by the parent once every process has exited cleanly
            torch.save({k: v.detach().to("cpu") for k, v in task.model.state_dict().items()}, run / WEIGHTS)
            (run / RESULT).write_text(json.dumps(asdict(result)))
        shard.barrier()
    finally:
        dist.destroy_process_group()


@record
def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: torchrun ... -m {__name__} PAYLOAD (see fit_distributed)")
    path = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    _exit_with_parent(rank)
    try:
        with path.open("rb") as handle:
            payload: Payload = pickle.load(handle)
        _train(payload, path.parent)
    except BaseException:
        (path.parent / f"error-{rank}.txt").write_text(traceback.format_exc())
        raise


if __name__ == "__main__":
    main()
