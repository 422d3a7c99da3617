# berth_end.py -- OpenPBS execjob_epilogue hook: stop the job's berth containers on this
# execution host and remove their state (what TORQUE's mom_priv/epilogue does with berth-pbs).
#
#   qmgr -c "create hook berth_end event=execjob_epilogue"
#   qmgr -c "import hook berth_end application/x-python default berth_end.py"
#   qmgr -c "set hook berth_end enabled=true"
#
# berth-pbs epilogue runs as root, drops to the job user, stops the job's holder (and its
# tasks and FUSE server) and always exits 0; nothing here can fail the job.

import os
import subprocess

import pbs

STARTER = os.environ.get("BERTH_PBS_STARTER", "/usr/libexec/berth/berth-pbs")


def main():
    e = pbs.event()
    try:
        jobid = str(e.job.id)
        user = str(e.job.euser)
        if jobid and user and os.path.exists(STARTER):
            subprocess.call([STARTER, "epilogue", jobid, user])
    except Exception as err:  # never fail the job over clean-up
        try:
            pbs.logmsg(pbs.LOG_DEBUG, "berth: epilogue: %s" % err)
        except Exception:
            pass
    e.accept()


main()
