"""A process that has imported torch once and forks each trial worker from there.

Starting ``python -m autotune.worker`` costs about 8 s here before the worker does anything:
importing torch, torchvision and Inductor. A tuner starts one worker per trial and per
confirmation candidate, so that was most of a small model's study. The zygote pays it once; each
worker is still a fresh process (its own address space, session, cores and limits) forked from an
interpreter that has only imported modules: no tensor op has run, so no OpenMP pool exists to be
broken by the fork. The worker then builds the model and compiles as before.

Environment variables can be read at import time (OpenMP, Inductor), so a zygote serves only
workers whose environment equals its own, apart from the variables ``RUNTIME_VARS`` that the
worker reads later. ``AUTOTUNE_WORKER_START=exec`` starts every worker with a plain exec instead.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger("autotune")

PRELOAD = ("torch", "torchvision", "torch._dynamo", "torch._inductor.config",
           "torch._inductor.compile_fx", "backend", "backend.compiler", "autotune.models",
           "autotune.worker")
# Read by the worker after the fork, so a zygote can serve any value of them (it is started
# without them).
RUNTIME_PREFIXES = ("AUTOTUNE_", "IPEX_AUTOTUNE_")
RUNTIME_VARS = {"OMP_NUM_THREADS"}
# Set by torch's own import in the tuner, after the zygote was started, and read again at each
# use: a worker's value need not match its zygote's (which still starts with the caller's).
UNMATCHED_VARS = {"TORCHINDUCTOR_CACHE_DIR"}
# OpenMP binds threads to places it works out from the CPU mask when it loads, in the zygote:
# with these set, a worker on its own cores needs its own process.
EXEC_ONLY_VARS = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY")
START_TIMEOUT_S = 300.0
MAX_MESSAGE = 1 << 20


def _is_runtime(name: str) -> bool:
    return name in RUNTIME_VARS or name.startswith(RUNTIME_PREFIXES)


def preload_env(env: dict) -> tuple:
    """The part of a worker's environment that must equal its zygote's."""
    return tuple(sorted((k, v) for k, v in env.items()
                        if not _is_runtime(k) and k not in UNMATCHED_VARS))


def die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# --------------------------------------------------------------------------------------- zygote side

def _become_worker(request: dict, fds: list[int], inherited: list[int], zygote_pid: int) -> None:
    """In the forked child: set up as an exec'd worker starts (session, descriptors, environment,
    cores, thread pools), run the entry point, exit with its code.

    ``inherited``: the zygote's own descriptors, closed here so that only the zygote holds them."""
    code = 1
    try:
        stdin_fd, log_fd, reply_fd, status_fd = fds
        signal.set_wakeup_fd(-1)
        for fd in inherited + [status_fd]:
            os.close(fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # Ctrl-C in the terminal reaches the tuner, which ends us
        die_with_parent()
        if os.getppid() != zygote_pid:  # the zygote died before we asked to die with it
            os._exit(1)
        os.dup2(stdin_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(stdin_fd)
        os.close(log_fd)
        sys.stdin = open(0, "r", closefd=False)
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["AUTOTUNE_REPLY_FD"] = str(reply_fd)
        if request["cpus"]:
            os.sched_setaffinity(0, request["cpus"])
        _threads_as_if_exec()
        module, _, function = request["entry"].partition(":")
        code = getattr(importlib.import_module(module), function)()
    except SystemExit as exit_:  # as an exec'd process exits: sys.exit() is 0, a message is 1
        code = 0 if exit_.code is None else exit_.code
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            import atexit
            atexit._run_exitfuncs()  # as at an exec'd worker's exit: e.g. Inductor's compile pool
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _threads_as_if_exec() -> None:
    """OpenMP and Inductor sized their pools from the zygote's cores and environment at import;
    size them as a fresh process on this worker's cores would."""
    import torch
    import torch._inductor.config as inductor_config

    threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0
                          else len(os.sched_getaffinity(0)))
    inductor_config.compile_threads = inductor_config.decide_compile_threads()


def _zygote_main() -> int:
    control = socket.socket(fileno=int(os.environ.pop("AUTOTUNE_ZYGOTE_FD")))
    for name in PRELOAD:
        importlib.import_module(name)
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wakeup_w)
    control.sendall(b"ready")
    quiet = os.open(os.devnull, os.O_WRONLY)  # nobody reads our stderr from here on
    os.dup2(quiet, 2)
    os.close(quiet)
    statuses: dict[int, int] = {}  # worker pid -> the pipe its exit code goes to
    accepting = True
    while accepting or statuses:
        watched = [wakeup_r] + ([control] if accepting else [])
        try:
            ready, _, _ = select.select(watched, [], [], 1.0)
        except InterruptedError:
            ready = []
        if wakeup_r in ready:
            os.read(wakeup_r, 4096)
        _reap(statuses)
        if control not in ready:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 4)
        except OSError:
            message, fds = b"", []
        if not message or len(fds) != 4:  # the tuner is gone or done: finish its workers, exit
            for fd in fds:
                os.close(fd)
            accepting = False
            control.close()
            continue
        try:
            _fork_worker(json.loads(message), fds, statuses,
                         [control.fileno(), wakeup_r, wakeup_w, *statuses.values()])
        except OSError:  # e.g. out of processes: the parent sees the status pipe close
            pass
        finally:
            for fd in fds:
                if fd not in statuses.values():
                    os.close(fd)
    return 0


def _fork_worker(request: dict, fds: list[int], statuses: dict[int, int], inherited: list[int]) -> None:
    sys.stdout.flush()  # nothing buffered here may be written again by the child
    sys.stderr.flush()
    zygote_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        _become_worker(request, fds, inherited, zygote_pid)
    statuses[pid] = fds[3]
    os.write(fds[3], f"{pid}\n".encode())


def _reap(statuses: dict[int, int]) -> None:
    while statuses:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status_fd = statuses.pop(pid, None)
        if status_fd is not None:
            os.write(status_fd, f"{os.waitstatus_to_exitcode(status)}\n".encode())
            os.close(status_fd)


# -------------------------------------------------------------------------------------- parent side

class ForkedWorker:
    """The part of ``subprocess.Popen`` that ``WorkerProcess`` uses, for a worker the zygote forked."""

    def __init__(self, pid: int, stdin, status_fd: int):
        self.pid = pid
        self.stdin = stdin
        self.returncode: int | None = None
        self.zygote_died = False  # then the worker's end says nothing about its config
        self._status_fd = status_fd

    def poll(self) -> int | None:
        return self._wait(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._wait(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
        return code

    def _wait(self, timeout: float | None) -> int | None:
        if self.returncode is None and select.select([self._status_fd], [], [], timeout)[0]:
            text = os.read(self._status_fd, 64).decode().strip()
            # no code: the zygote died, and took its workers with it
            self.zygote_died = not text
            self.returncode = int(text) if text else -signal.SIGKILL
            os.close(self._status_fd)
            try:
                self.stdin.close()
            except BrokenPipeError:
                pass
        return self.returncode


class Zygote:
    def __init__(self, env: dict):
        parent_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.env = env
        self.process = subprocess.Popen(
            [sys.executable, "-m", "autotune.zygote"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**env, "AUTOTUNE_ZYGOTE_FD": str(zygote_end.fileno())},
            pass_fds=(zygote_end.fileno(),), start_new_session=True, preexec_fn=die_with_parent)
        zygote_end.close()
        self.control = parent_end
        self._ready = False
        self.forked = False

    def _await_ready(self) -> None:
        """The imports run while the caller does its own start-up; the first fork waits for them."""
        if self._ready:
            return
        if not select.select([self.control], [], [], START_TIMEOUT_S)[0] or self.control.recv(16) != b"ready":
            self.kill()  # a hung import must not hang us reading its stderr
            error = self.process.stderr.read().decode(errors="replace").strip().splitlines()
            self.process.stderr.close()
            raise OSError(error[-1] if error else f"no answer within {START_TIMEOUT_S:.0f} s")
        self.process.stderr.close()
        self._ready = True

    def alive(self) -> bool:
        return self.process.poll() is None

    def fork(self, entry: str, env: dict, cpus: list[int] | None, log_fd: int,
             reply_fd: int) -> ForkedWorker:
        """Fork a worker that runs ``entry`` ("module:function", its exit code)."""
        self._await_ready()
        stdin_r, stdin_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            request = json.dumps({"entry": entry, "env": env, "cpus": cpus}).encode()
            socket.send_fds(self.control, [request], [stdin_r, log_fd, reply_fd, status_w])
            line = b""
            deadline = time.monotonic() + 30
            while not line.endswith(b"\n"):
                if not select.select([status_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise OSError("the zygote did not fork a worker within 30 s")
                chunk = os.read(status_r, 1)
                if not chunk:
                    raise OSError("the zygote failed to fork a worker")
                line += chunk
        except OSError:
            # whatever it forked dies with it, and holds no copy of the caller's pipes
            self.kill()
            os.close(stdin_w)
            os.close(status_r)
            raise
        finally:
            os.close(stdin_r)
            os.close(status_w)
        self.forked = True
        return ForkedWorker(int(line), os.fdopen(stdin_w, "w"), status_r)

    def kill(self) -> None:
        self.control.close()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.control.close()  # the zygote exits once its workers have


_zygote: Zygote | None = None
_zygote_failed = False


def prestart(env: dict | None = None) -> None:
    """Start the zygote now, so that its imports overlap the caller's own start-up."""
    try:
        _zygote_for(dict(os.environ) if env is None else env)
    except OSError as exc:
        _give_up(exc)


def shutdown() -> None:
    """Let this process's zygote go: it exits once its workers have; one that forked none yet
    is stopped, so that its imports do not go on beside whatever this process does next."""
    global _zygote
    if _zygote is not None:
        if _zygote.forked:
            _zygote.close()
        else:
            _zygote.kill()
        _zygote = None


def _zygote_for(env: dict) -> Zygote | None:
    global _zygote
    if env.get("AUTOTUNE_WORKER_START") == "exec" or _zygote_failed or any(
            name in env for name in EXEC_ONLY_VARS):
        return None
    if _zygote is not None and (preload_env(_zygote.env) != preload_env(env) or not _zygote.alive()):
        _zygote.close()
        _zygote = None
    if _zygote is None:
        _zygote = Zygote({k: v for k, v in env.items() if not _is_runtime(k)})
    return _zygote


def start_worker(entry: str, env: dict, cpus: list[int] | None, log_fd: int,
                 reply_fd: int) -> ForkedWorker | None:
    """A worker running ``entry`` forked from a zygote with this environment, or None: then
    exec one instead."""
    try:
        starter = _zygote_for(env)
        return starter.fork(entry, env, cpus, log_fd, reply_fd) if starter else None
    except OSError as exc:
        _give_up(exc)
        return None


def _give_up(exc: OSError) -> None:
    global _zygote, _zygote_failed
    log.warning("autotune: starting workers from a preloaded process failed (%s); "
                "each worker imports torch itself from now on", exc)
    _zygote_failed = True
    if _zygote is not None:
        _zygote.close()
        _zygote = None


if __name__ == "__main__":
    sys.exit(_zygote_main())
