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
# under TORQUE's $job_starter). Jobs without CONTAINER in their Variable_List are accepted
# before anything else is looked at. Nothing here may raise: an exception would end the job
# with -17 and empty output files, so a failure launches a one-line program instead that
# puts "berth: ..." in the job's error file and exits 255, as berth-pbs does.

import pbs

STARTER = "/usr/libexec/berth/berth-pbs"


def _log(msg):
    try:
        pbs.logmsg(pbs.LOG_ERROR, msg)
    except Exception:
        pass


def _set_launch(e, progname, argv):
    e.progname = progname
    del e.argv[:]
    for a in argv:
        e.argv.append(a)


def _wrap(e, container):
    progname = str(e.progname)
    argv = [str(a) for a in e.argv]
    if progname == STARTER or (argv and argv[0] == STARTER):
        return  # already wrapped (hook ran twice)
    # The mom hands batch and interactive shells an empty argv (progname /bin/bash) and TM
    # tasks their own ([name, args...]): the starter gets the program's path, then its
    # arguments. The mom execs it as argv [-berth-pbs, PROGRAM, ARGS...].
    _set_launch(e, STARTER, [STARTER, progname] + argv[1:])
    # Tasks must see where the image is even if the launch environment lacks it.
    if e.env is not None and not e.env.get("CONTAINER"):
        e.env["CONTAINER"] = container


def main():
    e = pbs.event()
    jobid = "?"
    try:
        jobid = str(e.job.id)
        vl = e.job.Variable_List
        container = vl["CONTAINER"] if vl is not None and "CONTAINER" in vl else None
    except Exception as err:
        # Nothing says this is a container job: it runs as it would without berth.
        _log("berth: job %s: cannot read its Variable_List (%s: %s); launched unchanged" % (jobid, type(err).__name__, err))
        e.accept()
        return
    if not container:
        e.accept()
        return
    try:
        _wrap(e, str(container))
    except Exception as err:
        msg = "the berth launch hook failed (%s: %s); the administrator finds it in packaging/openpbs/berth_launch.py" % (type(err).__name__, err)
        _log("berth: job %s: %s" % (jobid, msg))
        try:
            _set_launch(e, "/bin/sh", ["/bin/sh", "-c", 'printf "%s\\n" "$1" >&2; exit 255', "sh", "berth: " + msg])
        except Exception:
            e.reject("berth: " + msg)
            return
    e.accept()


main()
