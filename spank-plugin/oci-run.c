/*
 * berth-oci-run: the last step of a Slurm task that runs with `--container` on Slurm 23.02 and
 * later, where berth is Slurm's OCI runtime (packaging/slurm/oci.conf).
 *
 *     berth-oci-run ENVFILE PROGRAM [ARGS...]
 *
 * With an oci.conf, slurmstepd does not exec the task's program itself: after the SPANK
 * plugin's task_init (which has joined the step's container and resolved the program along
 * the image's PATH) it runs oci.conf's RunTimeRun with `/bin/sh -c`, in slurmstepd's own
 * environment. The task's environment (SLURM_*, PMIX_*, what the plugin, TaskProlog and
 * --export set) is only in ENVFILE, which slurmstepd writes for `CreateEnvFile=null`: one
 * NAME=VALUE entry after another, each ending in a NUL byte. This program reads it and
 * execs PROGRAM with exactly that environment, as slurmstepd would have.
 *
 * It runs inside the image, whose C library (if any) is not the host's: it is linked
 * statically and uses nothing but open, read, close and execve. The plugin opens it on the
 * host before joining the container and hands it to RunTimeRun as /proc/self/fd/N
 * (BERTH_OCI_RUN); BERTH_OCI_FD names that descriptor, which is closed here and the
 * variable left out, so the program starts with no descriptor and no variable of berth's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A task environment larger than this is refused rather than cut: the kernel's own limit for
 * argv and environment together is a quarter of the stack limit, 2 MiB by default. */
#define MAX_ENV_BYTES (64u << 20)

static int fail(const char *what, const char *path)
{
    /* The task's stderr is the user's terminal (srun) or the job's error file (sbatch). */
    fprintf(stderr, "berth: error: %s %s: %s\n", what, path, strerror(errno));
    return 127;
}

static int dropped(const char *entry)
{
    return strncmp(entry, "BERTH_OCI_RUN=", 14) == 0 || strncmp(entry, "BERTH_OCI_FD=", 13) == 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s ENVFILE PROGRAM [ARGS...] (Slurm's RunTimeRun, see oci.conf)\n", argv[0]);
        return 2;
    }
    const char *own = getenv("BERTH_OCI_FD");
    if (own) {
        char *end;
        long fd = strtol(own, &end, 10);
        if (*own && !*end && fd > 2)
            close((int)fd);
    }

    int fd = open(argv[1], O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0)
        return fail("the task's environment file", argv[1]);
    /* slurmstepd writes it as the task's user, mode 0750, in a directory its group may write:
     * a file someone else put in its place (another user of that group) is refused. */
    struct stat st;
    if (fstat(fd, &st) < 0)
        return fail("the task's environment file", argv[1]);
    if (!S_ISREG(st.st_mode) || st.st_uid != getuid() || (st.st_mode & (S_IWGRP | S_IWOTH))) {
        errno = EPERM;
        fprintf(stderr, "berth: error: the task's environment file %s is not a file of yours that only you may "
                        "write (owner uid %u, mode %o): refused\n",
                argv[1], (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
        return 127;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf)
        return fail("memory for", argv[1]);
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_ENV_BYTES) {
                errno = E2BIG;
                return fail("the task's environment file", argv[1]);
            }
            cap *= 2;
            char *grown = realloc(buf, cap + 1);
            if (!grown)
                return fail("memory for", argv[1]);
            buf = grown;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return fail("reading", argv[1]);
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0'; /* a last entry without its NUL still ends */

    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\0')
            count++;
    char **env = calloc(count + 2, sizeof(char *));
    if (!env)
        return fail("memory for", argv[1]);
    size_t n = 0;
    for (char *p = buf; p < buf + len; p += strlen(p) + 1)
        if (*p && strchr(p, '=') && !dropped(p))
            env[n++] = p;
    env[n] = NULL;

    execve(argv[2], argv + 2, env);
    return fail("cannot run", argv[2]);
}
