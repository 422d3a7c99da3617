# berth_end.py -- OpenPBS execjob_epilogue hook: stop the job's berth containers on this
# execution host and remove their state (what TORQUE's mom_priv/epilogue does with berth-pbs).
#
#   qmgr -c "create hook berth_end event=execjob_epilogue"
#   qmgr -c "import hook berth_end application/x-python default berth_end.py"
#   qmgr -c "set hook berth_end enabled=true"
#
# For jobs with CONTAINER in their Variable_List (the only ones berth_launch.py runs in a
# container; others are accepted before anything else is looked at): berth-pbs epilogue
# runs as root, drops to the job user, stops the job's holder (and its tasks and FUSE
# server). What it prints, and a non-zero exit status (the container was not stopped), goes
# to the mom log at its default level (LOG_ERROR); nothing here fails the job.

import os

import pbs

STARTER = os.environ.get("BERTH_PBS_STARTER", "/usr/libexec/berth/berth-pbs")


def _log(msg):
    try:
        pbs.logmsg(pbs.LOG_ERROR, msg)
    except Exception:
        pass


def _run(argv):
    """argv's exit status (negative: killed by that signal) and its stdout and stderr."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, b"".join(chunks).decode("utf-8", "replace")


def main():
    e = pbs.event()
    jobid = "?"
    try:
        jobid = str(e.job.id)
        vl = e.job.Variable_List
        if vl is None or "CONTAINER" not in vl:
            e.accept()
            return
        user = str(e.job.euser)
        if not user:
            _log("berth: job %s: no job owner (euser): its container is not stopped" % jobid)
        elif not os.path.exists(STARTER):
            _log("berth: job %s: %s is missing: its container is not stopped" % (jobid, STARTER))
        else:
            code, out = _run([STARTER, "epilogue", jobid, user])
            for line in out.splitlines():
                if line.strip():
                    _log("berth: job %s: %s" % (jobid, line))
            if code != 0:
                _log("berth: job %s: %s epilogue %s %s exited with %d" % (jobid, STARTER, jobid, user, code))
    except Exception as err:  # never fail the job over clean-up
        _log("berth: job %s: epilogue hook: %s: %s" % (jobid, type(err).__name__, err))
    e.accept()


main()
