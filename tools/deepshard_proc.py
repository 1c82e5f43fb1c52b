"""Running `deepshard` under mpirun from Python: one copy of "start mpirun serve,
wait for it, find its ranks, talk HTTP to it", shared by tools/soak.py,
tools/fault_inject.py and tests/serve/serve_e2e_test.py. Standard library only.

    srv = Server(deepshard, mpirun, model, log_path, pp=2, ep=2, extra=["--drain-timeout", "60"])
    status, body = srv.post("/v1/completions", {"prompt": [1, 2], "max_tokens": 4})
    os.kill(srv.rank_pids()[3], signal.SIGKILL)
    rc = srv.wait(30)
    srv.kill()          # whatever is left of the job (its whole session)

mpirun runs in a session of its own (start_new_session), and Open MPI 4 starts the
ranks as its children in that session, so session_processes(srv.proc.pid) is every
process the job left behind, even after mpirun itself is gone.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time

# What every script passes to mpirun: more ranks than cores, no binding, TCP only.
MPI_FLAGS = ["--oversubscribe", "--allow-run-as-root", "--mca", "pml", "ob1", "--bind-to", "none"]


def mpirun_command(mpirun, n_ranks, argv):
    return [mpirun] + MPI_FLAGS + ["-np", str(n_ranks)] + list(argv)


def job_env(extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(extra or {})
    return env


def make_model(deepshard, out, preset="tiny-v3", layers=4, seed=1, extra=(), max_position_embeddings=None):
    """A random-weight model (deepshard make-model). max_position_embeddings raises the
    tiny presets' context of 128 tokens in config.json, for prompts long enough that
    prefill takes many steps (the weights do not depend on it)."""
    subprocess.run([deepshard, "make-model", "--preset", preset, "--layers", str(layers), "--seed", str(seed),
                    "--out", out] + list(extra), check=True, stdout=subprocess.DEVNULL)
    if max_position_embeddings is not None:
        path = os.path.join(out, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["max_position_embeddings"] = max_position_embeddings
        with open(path, "w") as f:
            json.dump(config, f, indent=1)
    return out


def free_port():
    """A TCP port free right now (for a server whose log cannot be read back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid):
    """(state, session id) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], int(rest[3])
    except (OSError, IndexError, ValueError):
        return None


def session_processes(sid):
    """{pid: (state, comm)} of every live process (zombies excluded) in session `sid`."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is None or fields[1] != sid or fields[0] == "Z":
            continue
        try:
            with open(f"/proc/{name}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        out[int(name)] = (fields[0], comm)
    return out


def rank_pids_in_session(sid, comm="deepshard"):
    """{rank: pid} of the `comm` processes in session `sid`, by OMPI_COMM_WORLD_RANK in
    their environment (for jobs whose log does not say, e.g. generate, or a log on /dev/full)."""
    out = {}
    for pid, (_, c) in session_processes(sid).items():
        if c != comm:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(kv.split(b"=", 1)[1])] = pid
    return out


def sse_events(resp):
    """Yields the JSON objects of an SSE stream (http.client response), stops at [DONE]."""
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return
        yield json.loads(data)


# Prefix for a rank's command line that sends the rank's own stdout and stderr to
# PATH (under mpirun they otherwise go through mpirun, which writes them out itself).
def redirect_rank_output(path):
    return ["sh", "-c", f'exec "$@" >{path} 2>&1', "sh"]


def read_log(log, log_path):
    """What a job has written to `log` (open for writing at `log_path`) so far."""
    if not log.closed:
        log.flush()
    with open(log_path, errors="replace") as f:
        return f.read()


def kill_session(sid):
    """SIGCONT (a stopped rank dies only once running) + SIGKILL to every process of session `sid`."""
    for pid in session_processes(sid):
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


class Server:
    """`mpirun -np pp*ep deepshard serve --pp pp --ep ep --port 0 ...` in a session of
    its own, its output in `log_path`. Returns once /health answers 200.

    wrap: a prefix for each rank's command (e.g. redirect_rank_output("/dev/full"));
    when the log then does not say where the server listens, give `port`."""

    def __init__(self, deepshard, mpirun, model, log_path, pp=2, ep=2, extra=(), port=0, startup_timeout=180,
                 wrap=(), env=None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.port = None
        cmd = mpirun_command(mpirun, pp * ep, list(wrap) + [
            deepshard, "serve", "--model", model, "--pp", str(pp), "--ep", str(ep), "--port", str(port)] + list(extra))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=job_env(env),
                                     start_new_session=True)
        self.sid = self.proc.pid
        deadline = time.time() + startup_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.text()}")
            if port:
                found = port
            else:
                m = re.search(r"listening on http://[0-9.]+:(\d+)", self.text())
                found = int(m.group(1)) if m else None
            if found:
                self.port = found
                self.base = f"http://127.0.0.1:{self.port}"
                try:
                    if self.get("/health", timeout=5)[0] == 200:
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError("the server did not come up:\n" + self.text())

    def text(self):
        """The job's log so far."""
        return read_log(self.log, self.log_path)

    def rank_pids(self):
        """{rank: pid}: from the "rank R (stage S, column C) ready, pid P" lines, else /proc."""
        pids = {int(m.group(1)): int(m.group(2))
                for m in re.finditer(r"rank (\d+) \(stage \d+, column \d+\) ready, pid (\d+)", self.text())}
        return pids or rank_pids_in_session(self.sid)

    def control_port(self):
        m = re.search(r"control plane on [0-9.]+:(\d+)", self.text())
        return int(m.group(1)) if m else None

    def request(self, method, path, body=None, headers=None, timeout=60):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
        finally:
            conn.close()
        return r.status, data

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def metrics(self, headers=None):
        out = {}
        for line in self.get("/metrics", headers=headers)[1].decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def signal_all(self, sig):
        for pid in self.rank_pids().values():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        """mpirun's exit status, or None if it still runs after `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def left_behind(self):
        """{pid: (state, comm)} of the job's processes still alive."""
        return session_processes(self.sid)

    def kill(self):
        """SIGCONT + SIGKILL to whatever is left of the job's session; reaps mpirun."""
        kill_session(self.sid)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.log.close()
