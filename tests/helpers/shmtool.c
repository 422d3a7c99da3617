/* POSIX shared memory probe for the join test: `shmtool put NAME TEXT` creates a segment and
 * writes TEXT; `shmtool get NAME` prints it. Two container processes that share the mount
 * namespace (and so /dev/shm) see the same segment. Built static so any image can run it. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: shmtool put|get NAME [TEXT]\n"); return 2; }
    int put = strcmp(argv[1], "put") == 0;
    int fd = shm_open(argv[2], put ? O_CREAT | O_RDWR : O_RDONLY, 0600);
    if (fd < 0) { perror("shm_open"); return 1; }
    if (put && ftruncate(fd, 4096) != 0) { perror("ftruncate"); return 1; }
    char *p = mmap(NULL, 4096, put ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    if (put) { strncpy(p, argc > 3 ? argv[3] : "", 4095); }
    else { printf("%s\n", p); }
    return 0;
}
