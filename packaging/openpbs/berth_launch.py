# berth_launch.py -- OpenPBS execjob_launch hook: run the job script and every task it spawns
# (pbsdsh, mpiexec/orted through TM) inside the image named by the job's CONTAINER variable
# (qsub -v CONTAINER=/path/app.sif job.sh), by launching them through berth-pbs.
#
# Install (as root on the server host):
#   qmgr -c "create hook berth event=execjob_launch"
#   qmgr -c "import hook berth application/x-python default berth_launch.py"
#   qmgr -c "set hook berth enabled=true"
# berth-pbs must be installed at STARTER on every execution host.
#
# The hook only rewrites progname/argv: berth-pbs does the rest (one container per node per
# job, shared by all tasks; the batch shell reads the job script path from stdin exactly as
# under TORQUE's $job_starter). Jobs without CONTAINER are left untouched.

import pbs

STARTER = "/usr/libexec/berth/berth-pbs"


def _container(e):
    """The job's CONTAINER: its Variable_List first, then the launch environment."""
    value = None
    try:
        vl = e.job.Variable_List
        if vl is not None and "CONTAINER" in vl:
            value = vl["CONTAINER"]
    except Exception:
        value = None
    if not value:
        try:
            value = e.env.get("CONTAINER") if e.env is not None else None
        except Exception:
            value = None
    return str(value) if value else None


def main():
    e = pbs.event()
    container = _container(e)
    if not container:
        e.accept()
        return
    progname = str(e.progname)
    argv = [str(a) for a in e.argv]
    if progname == STARTER or (argv and argv[0] == STARTER):
        e.accept()  # already wrapped (hook ran twice)
        return
    # argv[0] may be a login-shell name ("-bash"): the starter gets the real program path.
    e.progname = STARTER
    new_argv = [STARTER, progname] + argv[1:]
    del e.argv[:]
    for a in new_argv:
        e.argv.append(a)
    try:
        # Tasks must see where the image is even if the launch environment lacks it.
        if e.env is not None and not e.env.get("CONTAINER"):
            e.env["CONTAINER"] = container
    except Exception:
        pass
    try:
        pbs.logmsg(pbs.LOG_DEBUG, "berth: launching %s through %s (CONTAINER=%s)" % (progname, STARTER, container))
    except Exception:
        pass
    e.accept()


main()
